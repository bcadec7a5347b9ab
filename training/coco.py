"""COCO JSON labels (as CVAT and other annotation tools export them)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagery.errors import InputError


@dataclass(frozen=True)
class CocoImage:
    """One COCO image entry and its boxes (pixel ``x0, y0, x1, y1``) and class names."""

    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    classes: tuple[str, ...]


def read_coco(path: str | Path) -> list[CocoImage]:
    """Read a COCO detection file; boxes ``[x, y, w, h]`` become ``x0, y0, x1, y1``."""
    try:
        doc = json.loads(Path(path).read_text())
        cats = {c["id"]: c["name"] for c in doc["categories"]}
        images = {im["id"]: im for im in doc["images"]}
        per: dict[int, list[tuple[list[float], str]]] = {i: [] for i in images}
        for ann in doc["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            per[ann["image_id"]].append(([x, y, x + w, y + h], cats[ann["category_id"]]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a COCO detection file ({type(exc).__name__}: {exc})") from None
    out = []
    for iid, im in images.items():
        anns = per[iid]
        boxes = np.array([a[0] for a in anns], dtype=float).reshape(-1, 4)
        out.append(CocoImage(im["file_name"], int(im["width"]), int(im["height"]), boxes, tuple(a[1] for a in anns)))
    return out
