"""Pool held-out figures over folds: precision, recall and F1 at each score threshold.

Each fold's ``sitewatch evaluate`` leaves a ``metrics.json`` with true positives, false
positives and misses at every score threshold (``by_threshold``). Summing them over folds
scores every held-out object once, by a model that did not see it, and is how a shipped
model's threshold is chosen (the best pooled F1), never on its own training data:

    python scripts/pool_folds.py folds/kilns/*/eval-*/metrics.json --places
    python scripts/pool_folds.py folds/vessels/*/eval/metrics.json

``--places`` pools by place (a kiln seen in two overlapping tiles counts once; the
``places`` section of metrics.json) instead of per scene. ``--json`` also writes the table.
``--each-best`` also pools every file at the threshold best for that file alone: with one
evaluation per port, the most that calibrating each port's scores could give (a ceiling,
chosen on the very labels it is scored on; never a figure to ship).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fold_counts(metrics: dict, places: bool, cls: str | None) -> dict[str, dict[str, int]]:
    """tp/fp/fn at each threshold of one fold's metrics.json (centre-distance matching)."""
    if places:
        section = metrics.get("places") or {}
        if not section:
            raise ValueError("has no 'places' section (evaluate by --primary distance writes one)")
        name = cls or next(iter(section))
        table = section[name]["by_threshold"]
    else:
        table = metrics["by_threshold"]["distance"]
    return {t: {k: int(v[k]) for k in ("tp", "fp", "fn")} for t, v in table.items()}


def pool(folds: list[dict[str, dict[str, int]]]) -> list[dict[str, float]]:
    """Sum the folds' counts at the thresholds they share; precision, recall and F1 of the sums."""
    shared = sorted(set.intersection(*(set(f) for f in folds)), key=float)
    rows = []
    for t in shared:
        tp, fp, fn = (sum(f[t][k] for f in folds) for k in ("tp", "fp", "fn"))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        rows.append({"threshold": float(t), "tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r,
                     "f1": 2 * p * r / (p + r) if p + r else 0.0})
    return rows


def each_best(folds: list[dict[str, dict[str, int]]]) -> dict[str, float]:
    """Sum of each fold's counts at its own best-F1 threshold; precision, recall and F1 of the sums."""
    def f1(c: dict[str, int]) -> float:
        return 2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]) if c["tp"] else 0.0
    picks = [max(f.values(), key=f1) for f in folds]
    return pool([{"0": c} for c in picks])[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", nargs="+", type=Path, help="each fold's metrics.json from sitewatch evaluate")
    ap.add_argument("--places", action="store_true", help="pool by place (overlapping tiles count a kiln once)")
    ap.add_argument("--class", dest="cls", default=None, help="class of --places (default: the first)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    ap.add_argument("--each-best", action="store_true",
                    help="also pool each file at its own best threshold (a ceiling, not a figure to ship)")
    args = ap.parse_args(argv)
    folds = []
    for path in args.metrics:
        try:
            folds.append(fold_counts(json.loads(path.read_text()), args.places, args.cls))
        except (OSError, ValueError, KeyError) as exc:
            print(f"pool_folds: {path}: cannot read its by-threshold figures ({exc}); give evaluate's metrics.json",
                  file=sys.stderr)
            return 2
    rows = pool(folds)
    if not rows:
        print("pool_folds: the folds share no score threshold", file=sys.stderr)
        return 2
    print(f"{len(folds)} folds pooled{' by place' if args.places else ''}")
    print(f"{'threshold':>9} {'tp':>5} {'fp':>5} {'fn':>5} {'P':>6} {'R':>6} {'F1':>6}")
    for r in rows:
        print(f"{r['threshold']:9.2f} {r['tp']:5d} {r['fp']:5d} {r['fn']:5d} "
              f"{r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f}")
    best = max(rows, key=lambda r: (r["f1"], r["threshold"]))
    print(f"best pooled F1 {best['f1']:.3f} at {best['threshold']:.2f} (P {best['precision']:.3f}, R {best['recall']:.3f})")
    ceiling = each_best(folds) if args.each_best else None
    if ceiling is not None:
        print(f"each file at its own best threshold: F1 {ceiling['f1']:.3f} (P {ceiling['precision']:.3f}, "
              f"R {ceiling['recall']:.3f}; tp {ceiling['tp']}, fp {ceiling['fp']}, fn {ceiling['fn']})")
    if args.json:
        table = {"folds": [str(p) for p in args.metrics], "rows": rows, "best": best}
        if ceiling is not None:
            table["each_best"] = ceiling
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
