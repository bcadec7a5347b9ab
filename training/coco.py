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
    #: The image's ``id`` in the file.
    image_id: object = None
    #: Each box's annotation ``id`` (its 1-based position in ``annotations`` when it has none).
    annotation_ids: tuple[object, ...] = ()


def read_coco(path: str | Path) -> list[CocoImage]:
    """Read a COCO detection file; boxes ``[x, y, w, h]`` become ``x0, y0, x1, y1``."""
    try:
        doc = json.loads(Path(path).read_text())
        cats = {c["id"]: c["name"] for c in doc["categories"]}
        images = {im["id"]: im for im in doc["images"]}
        per: dict[int, list[tuple[list[float], str, object]]] = {i: [] for i in images}
        for position, ann in enumerate(doc["annotations"], start=1):
            x, y, w, h = (float(v) for v in ann["bbox"])
            per[ann["image_id"]].append(([x, y, x + w, y + h], cats[ann["category_id"]], ann.get("id", position)))
        out = []
        for iid, im in images.items():
            anns = per[iid]
            out.append(
                CocoImage(
                    str(im["file_name"]),
                    int(im["width"]),
                    int(im["height"]),
                    np.array([a[0] for a in anns], dtype=float).reshape(-1, 4),
                    tuple(a[1] for a in anns),
                    image_id=iid,
                    annotation_ids=tuple(a[2] for a in anns),
                )
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a COCO detection file ({type(exc).__name__}: {exc})") from None
    return out
