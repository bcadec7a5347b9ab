"""Train and measure the ``vessels-s2`` model on sen2ships (run by hand).

    python scripts/train_vessels.py --data ../shared/data/sen2ships --lopo --steps 1500
    python scripts/train_vessels.py --data ../shared/data/sen2ships --final --steps 3000 \
        --out imagery/weights/vessels-s2

``--lopo`` trains one model per held-out port and reports precision, recall and F1 at
30 m centre distance (ground metres) pooled over the held-out ports, for a sweep of
score thresholds; ``--final`` trains on every port and writes the shipped checkpoint.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagery.checkpoint import ModelSpec, save_checkpoint  # noqa: E402
from imagery.georef import local_metres, pixel_to_map, to_lonlat  # noqa: E402
from imagery.matching import Counts, counts_at, match_centres  # noqa: E402
from imagery.models import build_model  # noqa: E402
from imagery.normalise import Normalisation  # noqa: E402
from imagery.scene import open_scene  # noqa: E402
from training.coco import read_coco  # noqa: E402
from training.dataset import ChipSampler, LabelledScene  # noqa: E402
from training.train import TrainSettings, predict_scene, train_model  # noqa: E402

BANDS = ("B02", "B03", "B04", "B08")
ARCH = {"widths": [32, 64, 96, 128], "blocks": [1, 2, 2, 1], "head_width": 32}
NORM = Normalisation()


def make_spec(settings: TrainSettings, version: str, threshold: float = 0.3) -> ModelSpec:
    return ModelSpec(
        name="vessels-s2", version=version, arch="centernet", classes=("vessel",), bands=BANDS,
        normalisation=NORM, arch_params=ARCH, tile_size=256, overlap=32, score_threshold=threshold,
        pixel_size_m=10.0, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        description="Ships in Sentinel-2 L2A 10 m imagery (B02, B03, B04, B08); trained on sen2ships.",
    )


def load(data: Path) -> list[LabelledScene]:
    scenes = []
    for im in read_coco(data / "coco_annotations.json"):
        city = im.file_name.split("_")[0]
        sc = open_scene(data / city, BANDS)
        scenes.append(LabelledScene(sc, im.boxes, np.zeros(len(im.boxes), np.int64)).load(NORM))
    return scenes


def centres_m(ls: LabelledScene, boxes: np.ndarray, ref: tuple[float, float]) -> np.ndarray:
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x, y = pixel_to_map(ls.scene.affine, cx, cy)
    lon, lat = to_lonlat(ls.scene.crs_wkt, x, y)
    return local_metres(lon, lat, *ref)


def evaluate(model, ls: LabelledScene, dist: float = 30.0) -> tuple[np.ndarray, np.ndarray, int]:  # type: ignore[no-untyped-def]
    det = predict_scene(model, ls, 0.05)
    s = ls.scene
    x, y = pixel_to_map(s.affine, np.array([s.width / 2]), np.array([s.height / 2]))
    lon0, lat0 = to_lonlat(s.crs_wkt, x, y)
    ref = (float(lon0[0]), float(lat0[0]))
    m = match_centres(centres_m(ls, det.boxes, ref), det.scores, centres_m(ls, ls.boxes, ref), dist)
    return m, det.scores, len(ls.boxes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lopo", action="store_true")
    ap.add_argument("--holdout", nargs="*", default=None, help="ports to hold out (default: each in turn)")
    ap.add_argument("--final", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("imagery/weights/vessels-s2"))
    ap.add_argument("--report", type=Path, default=None, help="write LOPO figures as JSON here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fold-dir", type=Path, default=None, help="save each LOPO fold's model here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    scenes = load(args.data)
    settings = TrainSettings(steps=args.steps, seed=args.seed)
    if args.lopo:
        ports = args.holdout or [s.scene.name for s in scenes]
        pooled: list[tuple[np.ndarray, np.ndarray, int, str]] = []
        for port in ports:
            t0 = time.time()
            train = [s for s in scenes if s.scene.name != port]
            test = [s for s in scenes if s.scene.name == port]
            model = build_model("centernet", len(BANDS), 1, ARCH)
            train_model(model, ChipSampler(train, settings.chip_size), 1, settings)
            if args.fold_dir:
                args.fold_dir.mkdir(parents=True, exist_ok=True)
                save_checkpoint(args.fold_dir / f"without-{port}.pt", make_spec(settings, "lopo"), model)
            m, sc, n = evaluate(model, test[0])
            pooled.append((m, sc, n, port))
            best = max((counts_at(m, sc, n, t).f1, t) for t in np.arange(0.1, 0.9, 0.05))
            c3 = counts_at(m, sc, n, 0.3)
            print(f"{port}: n={n} @0.3 P={c3.precision:.3f} R={c3.recall:.3f} F1={c3.f1:.3f} "
                  f"best F1={best[0]:.3f}@{best[1]:.2f} ({time.time()-t0:.0f}s)", flush=True)
        report = {"per_port": {}, "pooled": {}}
        for t in np.arange(0.1, 0.9, 0.05):
            tot = Counts(0, 0, 0)
            for m, sc, n, port in pooled:
                c = counts_at(m, sc, n, t)
                tot = tot + c
                report["per_port"].setdefault(f"{t:.2f}", {})[port] = c.as_dict()
            report["pooled"][f"{t:.2f}"] = tot.as_dict()
            print(f"threshold {t:.2f}: P={tot.precision:.3f} R={tot.recall:.3f} F1={tot.f1:.3f}", flush=True)
        if args.report:
            args.report.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
