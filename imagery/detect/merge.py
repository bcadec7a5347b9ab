"""Merge detections across tile seams: class-aware suppression in map coordinates.

Tile-core ownership (see :mod:`sitewatch.imagery.scenes.tiling`) already keeps one copy of an object cut
by a seam; suppression here removes what remains: an object seen twice with centres
that fall either side of a core boundary, or two peaks on one long object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import batched_nms

from sitewatch.imagery.detect.worker import empty_detections


def suppress(parts: Sequence[dict[str, np.ndarray]], iou: float) -> dict[str, np.ndarray]:
    """Concatenate detection arrays and drop lower-scoring same-class boxes overlapping by ``iou``.

    Boxes are compared in map coordinates (``map_boxes``); the result is sorted by
    descending score.
    """
    parts = [p for p in parts if len(p["scores"])]
    if not parts:
        return empty_detections()
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    mb = merged["map_boxes"]
    # Centre the coordinates: map coordinates are large, and NMS runs in float32.
    origin = mb[:, :2].min(axis=0)
    local = torch.from_numpy(np.concatenate([mb[:, :2] - origin, mb[:, 2:] - origin], axis=1))
    keep = batched_nms(local, torch.from_numpy(merged["scores"].astype(np.float64)), torch.from_numpy(merged["labels"]), iou)
    idx = keep.numpy()
    return {k: v[idx] for k, v in merged.items()}
