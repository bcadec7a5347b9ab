"""Set a model directory's default score threshold, chosen on held-out data, and say so in its card.

    python scripts/set_threshold.py models/kilns-s2 0.6 \\
        --why "best pooled F1 (by place) over the leave-one-district-out folds"

Rewrites MODEL_DIR/model.pt with the new ``score_threshold`` in its spec (the weights are
unchanged; the checksum changes, since it covers the spec), replaces the card's "Default score
threshold" line, and records the choice in metrics.json as ``threshold_choice``. The threshold
of a shipped model must come from data it was not trained on: ``--why`` says which.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

from sitewatch.imagery.errors import SitewatchError
from sitewatch.imagery.models.checkpoint import load_checkpoint, save_checkpoint
from sitewatch.imagery.models.registry import CHECKPOINT_NAME


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("threshold", type=float)
    ap.add_argument("--why", required=True, help="the held-out data the threshold was chosen on, and how")
    args = ap.parse_args(argv)
    if not 0 < args.threshold < 1:
        print(f"set_threshold: {args.threshold}: give a score threshold between 0 and 1", file=sys.stderr)
        return 2
    ckpt = args.model_dir / CHECKPOINT_NAME
    try:
        lm = load_checkpoint(ckpt)
    except SitewatchError as exc:
        print(f"set_threshold: {exc}", file=sys.stderr)
        return 2
    before = lm.spec.score_threshold
    checksum = save_checkpoint(ckpt, replace(lm.spec, score_threshold=args.threshold), lm.model)
    card = args.model_dir / "model_card.md"
    if card.is_file():
        text = re.sub(r"\* \*\*Default score threshold:\*\* [^\n]*\n",
                      f"* **Default score threshold:** {args.threshold:g} ({args.why}; was {before:g}).\n",
                      card.read_text(), count=1)
        card.write_text(text)
    metrics_path = args.model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["threshold_choice"] = {"threshold": args.threshold, "was": before, "why": args.why, "checksum": checksum}
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"{ckpt}: score threshold {before:g} -> {args.threshold:g} ({checksum})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
