"""Add a held-out evaluation (a `sitewatch evaluate` directory) to a model directory's card.

    python scripts/card_heldout.py MODEL_DIR EVAL_DIR --note "trained on the other six ports"

Appends a "Held-out evaluation" section to MODEL_DIR/model_card.md (per-scene and pooled
precision, recall, F1 and AP at the model's threshold, and pooled F1 over thresholds) and
records the figures in MODEL_DIR/metrics.json as ``held_out`` and ``headline`` (which
`sitewatch models` shows).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--note", default="", help="how the evaluated model relates to this one")
    ap.add_argument("--command", default="", help="the commands that produced EVAL_DIR")
    args = ap.parse_args()
    ev = json.loads((args.eval_dir / "metrics.json").read_text())
    crit = ev["settings"]["primary"]
    match = ev["headline"]["match"]
    rows = ["| scene | objects | precision | recall | F1 | AP |", "|---|---|---|---|---|---|"]
    for s in ev["per_scene"]:
        t = s["totals"][crit]
        rows.append(f"| {s['scene']} | {t['labels']} | {t['precision']:.2f} | {t['recall']:.2f} | {t['f1']:.2f} | "
                    f"{t['mean_ap']:.2f} |" if t.get("mean_ap") is not None else
                    f"| {s['scene']} | {t['labels']} | {t['precision']:.2f} | {t['recall']:.2f} | {t['f1']:.2f} | - |")
    tot = ev["totals"][crit]
    rows.append(f"| **pooled** | {tot['labels']} | **{tot['precision']:.2f}** | **{tot['recall']:.2f}** | "
                f"**{tot['f1']:.2f}** | {tot['mean_ap']:.2f} |")
    sweep = ev["by_threshold"][crit]
    srows = ["| score threshold | precision | recall | F1 |", "|---|---|---|---|"]
    for t in sorted(sweep, key=float):
        if float(t) in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
            c = sweep[t]
            srows.append(f"| {float(t):.1f} | {c['precision']:.2f} | {c['recall']:.2f} | {c['f1']:.2f} |")
    best_t = max(sweep, key=lambda k: sweep[k]["f1"])
    section = f"""
## Held-out evaluation

{args.note} Detections come from the real `detect` path (tiles, seams, merge); a detection
matches a labelled object of its class, one to one in score order, when {match}.
At the model's score threshold {ev['threshold']:g}:

{chr(10).join(rows)}

Pooled over the held-out scenes at other score thresholds (the best F1 is
{sweep[best_t]['f1']:.2f} at {float(best_t):.2f}):

{chr(10).join(srows)}

{('Reproduce: `' + args.command + '`') if args.command else ''}
"""
    card = args.model_dir / "model_card.md"
    card.write_text(card.read_text().rstrip() + "\n" + section)
    mpath = args.model_dir / "metrics.json"
    metrics = json.loads(mpath.read_text())
    held = {"on": "held-out scenes, " + match, "precision": tot["precision"], "recall": tot["recall"], "f1": tot["f1"],
            "threshold": ev["threshold"], "scenes": [s["scene"] for s in ev["per_scene"]],
            "per_scene": {s["scene"]: s["totals"][crit] for s in ev["per_scene"]}, "by_threshold": sweep}
    metrics = {"headline": {k: held[k] for k in ("on", "precision", "recall", "f1")}, "held_out": held,
               **{k: v for k, v in metrics.items() if k not in ("headline", "held_out")}}
    mpath.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"{card}: held-out F1 {tot['f1']:.2f} (P {tot['precision']:.2f}, R {tot['recall']:.2f}) at {ev['threshold']:g}")


if __name__ == "__main__":
    main()
