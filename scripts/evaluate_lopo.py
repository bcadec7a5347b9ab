"""Score leave-one-port-out fold models through the real ``detect`` path (run by hand).

    python scripts/evaluate_lopo.py --data ../shared/data/sen2ships --folds /tmp/folds \
        [--report lopo.json]

For each port, the model trained without it (``FOLDS/without-PORT.pt``, or
``without-PORT+PORT2+....pt`` for a fold that held out several ports) runs
``imagery.pipeline.detect`` on the port's band directory (tiles, seams, merge: exactly
what ``sitewatch detect`` does) at a low threshold; detections are matched one-to-one to
the labelled ships by centre distance in ground metres (30 m). Precision, recall and F1
are printed per port and pooled over ports for a sweep of score thresholds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagery.georef import local_metres, pixel_to_map, to_lonlat
from imagery.matching import Counts, counts_at, match_centres
from imagery.pipeline import DetectSettings, detect
from training.coco import read_coco

THRESHOLDS = [round(t, 2) for t in np.arange(0.1, 0.81, 0.05)]


def score_port(model: Path, port_dir: Path, boxes: np.ndarray, dist: float, settings: DetectSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """Detections' matches (index of the matched ship or -1), their scores, and the ship count."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = detect([port_dir], model, Path(tmp) / "run", settings)
    res = summary.results[0]
    sc, d = res.scene, res.detections
    cx, cy = pixel_to_map(sc.affine, (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2)
    lon, lat = to_lonlat(sc.crs_wkt, cx, cy)
    lon0, lat0 = float(lon.mean()), float(lat.mean())
    truth = local_metres(lon, lat, lon0, lat0)
    pred = local_metres(d["centre_lonlat"][:, 0], d["centre_lonlat"][:, 1], lon0, lat0)
    return match_centres(pred, d["scores"], truth, dist), d["scores"], len(boxes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--folds", type=Path, required=True)
    ap.add_argument("--distance", type=float, default=30.0)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--tta", action="store_true", help="average over flips at inference")
    args = ap.parse_args()
    settings = DetectSettings(score_threshold=0.05, tile_size=args.tile_size, overlap=args.overlap, tta=args.tta)
    per_port = {}
    for im in read_coco(args.data / "coco_annotations.json"):
        port = im.file_name.split("_")[0]
        # the fold model that did not see this port (folds may hold out several ports)
        models = [f for f in args.folds.glob("without-*.pt") if port in f.stem.removeprefix("without-").split("+")]
        if not models:
            continue
        model = models[0]
        per_port[port] = score_port(model, args.data / port, im.boxes, args.distance, settings)
    report: dict[str, object] = {"distance_m": args.distance, "ports": sorted(per_port), "pooled": {}, "per_port": {}}
    for t in THRESHOLDS:
        total = Counts(0, 0, 0)
        for port, (m, s, n) in per_port.items():
            c = counts_at(m, s, n, t)
            total = total + c
            report["per_port"].setdefault(str(t), {})[port] = c.as_dict()  # type: ignore[union-attr]
        report["pooled"][str(t)] = total.as_dict()  # type: ignore[index]
        print(f"threshold {t:.2f}: P={total.precision:.3f} R={total.recall:.3f} F1={total.f1:.3f} "
              f"(tp {total.tp}, fp {total.fp}, fn {total.fn})")
    best = max(THRESHOLDS, key=lambda t: report["pooled"][str(t)]["f1"])  # type: ignore[index]
    print(f"best pooled threshold {best}")
    for port in sorted(per_port):
        c = report["per_port"][str(best)][port]  # type: ignore[index]
        print(f"  {port:11s} ships {c['tp'] + c['fn']:3d}  P={c['precision']:.3f} R={c['recall']:.3f} F1={c['f1']:.3f}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
