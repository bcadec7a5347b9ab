"""Every sen2ships port held out once: train a vessels recipe on six ports, test on the other three.

    python scripts/vessels_lopo.py ../shared/data/sen2ships folds/v2 --seeds 0 1 \\
        [--partial ../shared/data/sen2ships-partial] [--set KEY=VALUE ...]

The nine ports go into three folds of three held-out ports (every third port in alphabetical
order, as the model card's splits A, B and C). For each seed and fold it runs
`sitewatch train` (configs/vessels-sentinel2.yaml unless --config) and `sitewatch evaluate`
(centre distance 30 m), skipping a fold whose evaluation is already there, then prints per
seed the pooled precision, recall and F1 over the 230 ships at each score threshold, per
port at the recipe's threshold, and the spread over seeds; the figures also go to
OUT/lopo.json. The partial ports (Santos, Los Angeles) only ever train: their labels are
not among the 230.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PORTS = ("algiers", "athens", "busan", "cartagena", "casablanca", "gdynia", "honolulu", "klang", "marseille")
FOLDS = {"A": ("algiers", "casablanca", "honolulu"), "B": ("athens", "cartagena", "klang"),
         "C": ("busan", "gdynia", "marseille")}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="the sen2ships directory")
    ap.add_argument("out", type=Path)
    ap.add_argument("--config", default="configs/vessels-sentinel2.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--folds", nargs="+", default=list(FOLDS), choices=list(FOLDS))
    ap.add_argument("--partial", type=Path, default=None, help="sen2ships-partial, to train on too")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    labels = args.data / "coco_annotations.json"
    for seed in args.seeds:
        for fold in args.folds:
            d = args.out / f"seed{seed}" / fold
            if (d / "eval" / "metrics.json").is_file():
                continue
            train = [str(args.data / p) for p in PORTS if p not in FOLDS[fold]]
            extra_labels = []
            if args.partial is not None:
                train += [str(args.partial / "santos"), str(args.partial / "los_angeles")]
                extra_labels = ["--labels", str(args.partial / "coco_annotations.json")]
            sets = [x for s in [*args.sets, f"train.seed={seed}"] for x in ("--set", s)]
            run(["sitewatch", "train", "--config", args.config, "--images", *train, "--labels", str(labels),
                 *extra_labels, "--skip-bad-labels", "--out", str(d / "model"), "--overwrite", *sets])
            run(["sitewatch", "evaluate", "--model", str(d / "model"), "--labels", str(labels), "--skip-bad-labels",
                 "--class-map", "ship=vessel", "--primary", "distance", "--distance-m", "30", "--out", str(d / "eval"),
                 "--overwrite", *[str(args.data / p) for p in FOLDS[fold]]])
    report: dict[str, object] = {"seeds": {}}
    best_f1 = []
    for seed in args.seeds:
        sweep: dict[str, list[int]] = {}
        ports: dict[str, dict[str, float]] = {}
        threshold = None
        for fold in args.folds:
            m = json.loads((args.out / f"seed{seed}" / fold / "eval" / "metrics.json").read_text())
            threshold = m["threshold"]
            for t, c in m["by_threshold"]["distance"].items():
                a = sweep.setdefault(t, [0, 0, 0])
                a[0] += c["tp"]; a[1] += c["fp"]; a[2] += c["fn"]  # noqa: E702
            for s in m["per_scene"]:
                d = s["totals"]["distance"]
                ports[s["scene"]] = {k: round(d[k], 3) for k in ("precision", "recall", "f1")}
        rows = {t: {"tp": a[0], "fp": a[1], "fn": a[2], "precision": a[0] / max(a[0] + a[1], 1),
                    "recall": a[0] / max(a[0] + a[2], 1), "f1": 2 * a[0] / max(2 * a[0] + a[1] + a[2], 1)}
                for t, a in sorted(sweep.items())}
        at = rows[f"{threshold:.2f}"]
        best = max(rows, key=lambda t: rows[t]["f1"])
        best_f1.append(at["f1"])
        report["seeds"][seed] = {"threshold": threshold, "at_threshold": at, "best": {best: rows[best]},  # type: ignore[index]
                                 "by_threshold": rows, "ports": ports}
        print(f"seed {seed}: at {threshold}: P {at['precision']:.3f} R {at['recall']:.3f} F1 {at['f1']:.3f} "
              f"({at['tp'] + at['fn']} ships); best F1 {rows[best]['f1']:.3f} at {best}")
        print("   " + ", ".join(f"{p} {v['f1']:.2f}" for p, v in sorted(ports.items())))
    if len(best_f1) > 1:
        print(f"F1 at the recipe's threshold over seeds: mean {statistics.mean(best_f1):.3f}, "
              f"min {min(best_f1):.3f}, max {max(best_f1):.3f}")
    (args.out / "lopo.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
