"""The review-to-better-model loop, measured on one fold (run by hand; figures, not a test).

1. `sitewatch evaluate` the model on the fold's OTHER held-out ports (before);
2. `sitewatch detect` it on one held-out PORT;
3. review every candidate site of that run through the store's review API, as a reviewer
   who knows the labels would: confirm a site whose centre lies within --match-m of a
   labelled ship, reject the others;
4. `sitewatch export --status confirmed --status rejected` the decisions;
5. `sitewatch train --init MODEL` on the export (the model's own config, one epoch at lr 0.0001),
   alone or with the parent's training scenes and labels (--mix-images, --mix-labels);
6. `sitewatch evaluate` the fine-tuned model on the other ports (after).

    python scripts/review_loop.py --model folds/A/model --port ../shared/data/sen2ships/algiers \\
        --others ../shared/data/sen2ships/casablanca ../shared/data/sen2ships/honolulu \\
        --labels ../shared/data/sen2ships/coco_annotations.json --out loop/A

Prints the number of reviews, the fine-tune's minutes and F1 (at 30 m) before and after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.models.spec import read_spec
from sitewatch.imagery.scenes.georef import ground_pixel_m
from sitewatch.imagery.scenes.scene import open_scene
from sitewatch.training.labels import LabelOptions, read_labels

#: The fine-tune's overrides unless --set gives others: short and gentle (see the README's table).
DEFAULT_SETS = ["train.epochs=1", "train.lr=0.0001"]


def sitewatch(*args: str) -> None:
    exe = Path(sys.executable).with_name("sitewatch")
    subprocess.run([str(exe), *args], check=True)


def evaluate(model: Path, labels: Path, scenes: list[str], out: Path) -> dict[str, float]:
    sitewatch("evaluate", "--model", str(model), "--labels", str(labels), "--skip-bad-labels", "--class-map",
              "ship=vessel", "--primary", "distance", "--distance-m", "30", "--out", str(out), "--overwrite", *scenes)
    m = json.loads((out / "metrics.json").read_text())
    pooled = m["totals"]["distance"]
    return {k: float(pooled[k]) for k in ("precision", "recall", "f1")}


def review_by_labels(run: Path, port: str, labels: Path, bands: tuple[str, ...], match_m: float) -> dict[str, int]:
    """Confirm each site within ``match_m`` of a labelled ship, reject the rest; counts of each."""
    scene = open_scene(port, bands)
    truth = read_labels([labels], [scene], LabelOptions(classes=("vessel",), class_map=(("ship", "vessel"),),
                                                      skip_problems=True)).scenes[0]
    centres = np.column_stack([(truth.boxes[:, 0] + truth.boxes[:, 2]) / 2, (truth.boxes[:, 1] + truth.boxes[:, 3]) / 2])
    px_m = ground_pixel_m(scene.affine, scene.crs_wkt, scene.width / 2, scene.height / 2)
    store = CandidateStore.in_run_dir(run)
    counts = {"confirmed": 0, "rejected": 0}
    for site in store.sites():
        boxes = np.array([d.box_px for d in store.detections(site_id=site.site_id) if d.box_px is not None])
        cx, cy = (boxes[:, 0] + boxes[:, 2]).mean() / 2, (boxes[:, 1] + boxes[:, 3]).mean() / 2
        near = len(centres) and float(np.min(np.hypot(centres[:, 0] - cx, centres[:, 1] - cy))) * px_m <= match_m
        status = "confirmed" if near else "rejected"
        store.review(site.site_id, status, reviewer="review-loop", note=f"label within {match_m:g} m" if near else "")
        counts[status] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model directory (trained without the ports below)")
    ap.add_argument("--port", required=True, help="the held-out port to detect on and review")
    ap.add_argument("--others", nargs="+", required=True, help="the fold's other held-out ports (to measure)")
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--match-m", type=float, default=30.0)
    ap.add_argument("--set", dest="sets", action="append", default=None,
                    help="fine-tune overrides of the model's config, repeatable (default: train.epochs=1, train.lr=0.0001)")
    ap.add_argument("--mix-images", nargs="+", default=[], metavar="SCENE",
                    help="the parent's training scenes, to fine-tune on together with the reviews")
    ap.add_argument("--mix-labels", nargs="+", type=Path, default=[], metavar="FILE",
                    help="the labels of --mix-images")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    spec = read_spec(args.model / "model.pt")

    before = evaluate(args.model, args.labels, args.others, args.out / "eval-before")
    sitewatch("detect", args.port, "--model", str(args.model), "--out", str(args.out / "detect"), "--overwrite")
    counts = review_by_labels(args.out / "detect", args.port, args.labels, spec.bands, args.match_m)
    export = args.out / "reviewed.geojson"
    sitewatch("export", str(args.out / "detect"), "--status", "confirmed", "--status", "rejected", "--out", str(export),
              "--overwrite")
    t0 = time.monotonic()
    sets = [a for s in (args.sets or DEFAULT_SETS) for a in ("--set", s)]
    mix = [a for f in args.mix_labels for a in ("--labels", str(f))]
    sitewatch("train", "--init", str(args.model), "--images", args.port, *args.mix_images,
              "--labels", str(export), *mix, *(["--skip-bad-labels"] if args.mix_images else []),
              "--out", str(args.out / "finetuned"), "--overwrite", *sets)
    minutes = (time.monotonic() - t0) / 60
    after = evaluate(args.out / "finetuned", args.labels, args.others, args.out / "eval-after")
    result = {"reviews": counts, "finetune_minutes": round(minutes, 1), "before": before, "after": after,
              "port": args.port, "others": args.others, "sets": args.sets or DEFAULT_SETS,
              "mix_images": args.mix_images}
    (args.out / "loop.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"reviews: {counts['confirmed']} confirmed, {counts['rejected']} rejected; fine-tune {minutes:.1f} min")
    print(f"F1 at 30 m on {', '.join(Path(p).name for p in args.others)}: before {before['f1']:.3f} "
          f"(P {before['precision']:.2f}, R {before['recall']:.2f}), after {after['f1']:.3f} "
          f"(P {after['precision']:.2f}, R {after['recall']:.2f})")


if __name__ == "__main__":
    main()
