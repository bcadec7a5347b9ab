"""False alarms per 100 km² of ground on scenes known to hold none of a model's objects.

Runs ``sitewatch detect`` (the real pipeline) over object-free scenes, for example kiln
model on Sentinel-2 port scenes, and prints, per scene and over all, the detections at or
above the model's score threshold (or ``--score-threshold``) per 100 km² of ground
(the scene's valid pixels times their ground area, not its map area: a Web Mercator
pixel at 40° N covers 0.59 of its nominal area):

    python scripts/false_alarms.py --model models/kilns-s2 --out runs/fa \\
        ../shared/data/sen2ships/gdynia ../shared/data/sen2ships/klang

It also counts the alarms at every 0.05 step above that threshold (run it once at a low
threshold for the whole curve). Every detection on such scenes is a false alarm by
construction; the run directory keeps them (``detections.geojson``, the review store) for a
look at what fooled the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sitewatch.imagery.detect.pipeline import DetectSettings, detect
from sitewatch.imagery.errors import SitewatchError
from sitewatch.imagery.scenes.georef import ground_pixel_m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenes", nargs="+", help="object-free scenes (files or band directories)")
    ap.add_argument("--model", required=True, help="shipped model name or model directory")
    ap.add_argument("--out", required=True, type=Path, help="run directory to write")
    ap.add_argument("--bands", default=None, help="bands in the model's order, as for sitewatch detect --bands")
    ap.add_argument("--score-threshold", type=float, default=None, help="[default: the model's]")
    ap.add_argument("--tta", action="store_true", help="average the heatmap over flipped tiles (as detect --tta)")
    ap.add_argument("--nodata", type=float, default=None,
                    help="no-data value of files that carry none (0 for Sentinel-2 L2A downloads without it)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    settings = DetectSettings(score_threshold=args.score_threshold, tta=True if args.tta else None,
                              bands=tuple(args.bands.split(",")) if args.bands else None, nodata=args.nodata)
    try:
        summary = detect(args.scenes, args.model, args.out, settings, overwrite=True)
    except SitewatchError as exc:
        print(f"false_alarms: error: {exc}", file=sys.stderr)
        return 2
    threshold = summary.plan.settings.score_threshold
    rows = []
    for r in summary.results:
        sc = r.scene
        px_m = ground_pixel_m(sc.affine, sc.crs_wkt, sc.width / 2, sc.height / 2)
        valid = r.stats.valid_fraction if r.stats is not None else 1.0
        km2 = sc.width * sc.height * valid * px_m**2 / 1e6
        scores = np.asarray(r.detections.get("scores", []), dtype=float)
        n = int(np.sum(scores >= threshold))
        rows.append({"scene": sc.name, "km2": round(km2, 1), "false_alarms": n,
                     "per_100_km2": round(100 * n / km2, 3) if km2 else None,
                     "by_threshold": {f"{t:.2f}": int(np.sum(scores >= t)) for t in _higher(threshold)}})
    total_km2 = sum(r["km2"] for r in rows)
    total = sum(r["false_alarms"] for r in rows)
    print(f"model {summary.plan.model.spec.name} v{summary.plan.model.spec.version}, score threshold {threshold:g}")
    print(f"{'scene':24} {'km2':>8} {'alarms':>7} {'per 100 km2':>12}")
    for r in rows:
        print(f"{r['scene']:24} {r['km2']:8.1f} {r['false_alarms']:7d} {r['per_100_km2']:12.3f}")
    print(f"{'(all)':24} {total_km2:8.1f} {total:7d} {100 * total / total_km2:12.3f}")
    by_threshold = {t: sum(r["by_threshold"][t] for r in rows) for t in rows[0]["by_threshold"]} if rows else {}
    print("at higher thresholds (all scenes): " + ", ".join(
        f"{t}: {n} ({100 * n / total_km2:.2f} per 100 km2)" for t, n in by_threshold.items()))
    if args.json:
        args.json.write_text(json.dumps({"threshold": threshold, "scenes": rows, "km2": total_km2, "false_alarms": total,
                                         "per_100_km2": 100 * total / total_km2, "by_threshold": by_threshold},
                                        indent=1))
    return 0


def _higher(threshold: float) -> list[float]:
    """The run's threshold and the 0.05 steps above it, up to 0.9 (alarms at each)."""
    return [threshold] + [t / 100 for t in range(5, 95, 5) if t / 100 > threshold + 1e-9]


if __name__ == "__main__":
    sys.exit(main())
