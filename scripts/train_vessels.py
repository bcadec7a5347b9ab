"""Train and measure the ``vessels-s2`` model on sen2ships (run by hand).

    python scripts/train_vessels.py --data ../shared/data/sen2ships --lopo \
        --holdout algiers,casablanca,honolulu --steps 4000 --fold-dir folds
    python scripts/evaluate_lopo.py --data ../shared/data/sen2ships --folds folds
    python scripts/train_vessels.py --data ../shared/data/sen2ships --final --steps 4000 --threshold 0.4 \
        --out imagery/weights/vessels-s2

``--lopo`` trains one model per fold (a held-out port, or several) and saves it in
``--fold-dir``; ``scripts/evaluate_lopo.py`` scores them through the real detect path.
``--final`` trains on every port and writes the shipped model directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagery.checkpoint import ModelSpec, save_checkpoint  # noqa: E402
from imagery.models import build_model  # noqa: E402
from imagery.normalise import Normalisation  # noqa: E402
from imagery.scene import open_scene  # noqa: E402
from training.coco import read_coco  # noqa: E402
from training.dataset import Augment, ChipSampler, LabelledScene  # noqa: E402
from training.export import save_model_dir  # noqa: E402
from training.train import TrainSettings, train_model  # noqa: E402

BANDS = ("B02", "B03", "B04", "B08")
ARCH = {"widths": [32, 64, 96, 128], "blocks": [1, 2, 2, 1], "head_width": 32}
NORM = Normalisation()


def make_spec(settings: TrainSettings, version: str, threshold: float = 0.3) -> ModelSpec:
    return ModelSpec(
        name="vessels-s2", version=version, arch="centernet", classes=("vessel",), bands=BANDS,
        normalisation=NORM, arch_params=ARCH, tile_size=256, overlap=64, score_threshold=threshold, max_box_px=80.0,
        pixel_size_m=10.0, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        description="Ships in Sentinel-2 L2A 10 m imagery (B02, B03, B04, B08); trained on sen2ships.",
    )


CARD = """# Model card: vessels-s2 v{version}

* **What:** ships in Sentinel-2 L2A imagery, bands B02, B03, B04, B08 (10 m), as boxes.
* **Architecture:** `centernet` {arch}: torchvision BasicBlock trunk, stride-2 centre heatmap,
  dense centre supervision; trained from scratch (no pretrained weights).
* **Data:** sen2ships development split: 9 ports (algiers, athens, busan, cartagena, casablanca,
  gdynia, honolulu, klang, marseille), 230 labelled ships, EPSG:3857, ~10 m pixels, uint16
  stretched per scene. Normalisation: per-scene 1-99 percentile per band.
* **Training:** {steps} steps x 16 chips of 128 px (60% centred on a ship; after 35% and 65% of the
  steps, 25% centred on the model's own false positives), dihedral flips and
  rotations, gain/bias jitter, noise; AdamW, one-cycle lr 2e-3, seed {seed}; {minutes:.1f} min on
  2 CPU cores. Reproduce:
  `python scripts/train_vessels.py --data ../shared/data/sen2ships --final --steps {steps} --threshold {threshold}`.
* **Default score threshold:** {threshold} (the best pooled F1 on the held-out ports, below).
* **Created:** {created}.

## Leave-one-port-out evaluation

LOPO_TABLE
"""


def load(data: Path) -> list[LabelledScene]:
    scenes = []
    for im in read_coco(data / "coco_annotations.json"):
        city = im.file_name.split("_")[0]
        sc = open_scene(data / city, BANDS)
        scenes.append(LabelledScene(sc, im.boxes, np.zeros(len(im.boxes), np.int64)).load(NORM))
    return scenes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lopo", action="store_true")
    ap.add_argument("--holdout", nargs="*", default=None,
                    help="folds to hold out, each a port or comma-separated ports (default: each port in turn)")
    ap.add_argument("--final", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("imagery/weights/vessels-s2"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fold-dir", type=Path, default=Path("lopo-folds"), help="where --lopo saves each fold's model")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--scale", type=float, default=0.35, help="scale jitter (0 = off)")
    ap.add_argument("--threshold", type=float, default=0.3, help="default score threshold written into the model")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    scenes = load(args.data)
    settings = TrainSettings(steps=args.steps, seed=args.seed)
    augment = Augment(scale=args.scale)
    if args.lopo:
        # One model per held-out port; score them with scripts/evaluate_lopo.py, which runs
        # the real detect path (tiles, seams, merge) on each held-out port.
        # A fold may hold out several ports at once: --holdout algiers,athens,busan ...
        folds = [h.split(",") for h in args.holdout] if args.holdout else [[s.scene.name] for s in scenes]
        args.fold_dir.mkdir(parents=True, exist_ok=True)
        for held in folds:
            t0 = time.time()
            model = build_model("centernet", len(BANDS), 1, ARCH)
            train_model(model, ChipSampler([s for s in scenes if s.scene.name not in held], settings.chip_size, augment=augment), 1, settings)
            save_checkpoint(args.fold_dir / f"without-{'+'.join(held)}.pt", make_spec(settings, "lopo"), model)
            print(f"fold without {'+'.join(held)}: {time.time() - t0:.0f}s", flush=True)
    if args.final:
        t0 = time.time()
        model = build_model("centernet", len(BANDS), 1, ARCH)
        train_model(model, ChipSampler(scenes, settings.chip_size, augment=augment), 1, settings)
        minutes = (time.time() - t0) / 60
        spec = make_spec(settings, args.version, args.threshold)
        card = CARD.format(steps=settings.steps, minutes=minutes, seed=settings.seed, arch=ARCH, created=spec.created,
                           threshold=args.threshold, version=args.version)
        checksum = save_model_dir(args.out, spec, model, card, {"train_minutes": round(minutes, 2)})
        print(f"wrote {args.out} {checksum} in {minutes:.1f} min")

if __name__ == "__main__":
    main()
