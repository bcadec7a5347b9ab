#!/usr/bin/env python
"""Change a checkpoint's inference defaults (not its weights) and write it under a new version.

How vessels-s2 1.2.0 was made from 1.1.0 (the same weights, flip averaging on by default):

    python scripts/set_model_defaults.py imagery/weights/vessels-s2/model.pt --tta on \\
        --version 1.2.0 --out imagery/weights/vessels-s2/model.pt

The new checkpoint gets a new checksum; everything else in it is copied.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from imagery.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    """Parse arguments, rewrite the checkpoint, print its new checksum."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--version", required=True, help="the new version (the defaults change what detect gives)")
    p.add_argument("--tta", choices=("on", "off"), default=None, help="flip averaging at inference")
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    lm = load_checkpoint(args.checkpoint)
    changes: dict[str, object] = {"version": args.version}
    if args.tta is not None:
        changes["tta"] = args.tta == "on"
    if args.score_threshold is not None:
        changes["score_threshold"] = args.score_threshold
    spec = dataclasses.replace(lm.spec, **changes)
    checksum = save_checkpoint(args.out, spec, lm.model)
    print(f"{args.out}: {spec.name} {spec.version}, tta={spec.tta}, score_threshold={spec.score_threshold}; {checksum}")


if __name__ == "__main__":
    main()
