"""COCO JSON labels (as CVAT and other annotation tools export them).

Only what detection needs is read: ``images`` (``id``, ``file_name``, ``width``,
``height``), ``categories`` (``id``, ``name``) and ``annotations`` (``image_id``,
``category_id``, ``bbox`` as ``[x, y, width, height]`` pixels, optional ``id``). Anything
else in the file is ignored. A file that lacks one of these, or holds a value of the wrong
type, raises :class:`~sitewatch.imagery.errors.InputError` naming the entry; boxes that are merely
bad (no area, not finite, outside the image) are left to the caller to report per box.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sitewatch.imagery.errors import InputError


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
    """Read a COCO detection file; boxes ``[x, y, w, h]`` become ``x0, y0, x1, y1``.

    Raises:
        InputError: the file cannot be read, is not JSON, or is not COCO detection JSON
            (the message names the first entry at fault).
    """
    try:
        doc = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(path, f"not a COCO detection file (not JSON: {exc})") from None
    return parse_coco(path, doc)


def parse_coco(path: str | Path, doc: Any) -> list[CocoImage]:
    """The images of ``doc``, the parsed JSON of the COCO file ``path``, with their boxes.

    Raises:
        InputError: ``doc`` is not COCO detection JSON; the message (``not a COCO detection
            file (...)``) names the first entry at fault.
    """
    if not isinstance(doc, dict):
        raise _not_coco(path, f"the file holds a JSON {type(doc).__name__}, not an object")
    categories = _objects(path, doc, "categories")
    images = _objects(path, doc, "images")
    annotations = _objects(path, doc, "annotations")

    names: dict[int | str, str] = {}
    for k, cat in enumerate(categories, start=1):
        cid = _id(path, cat, "id", f"category {k}")
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _not_coco(path, f"category {k} has no 'name' text")
        names[cid] = name

    entries: dict[int | str, dict[str, Any]] = {}
    for k, im in enumerate(images, start=1):
        iid = _id(path, im, "id", f"image {k}")
        if iid in entries:
            raise _not_coco(path, f"image id {_shown(iid)} appears twice")
        entries[iid] = im
    per: dict[int | str, list[tuple[list[float], str, object]]] = {i: [] for i in entries}
    for position, ann in enumerate(annotations, start=1):
        where = f"annotation {position}"
        iid = _id(path, ann, "image_id", where)
        if iid not in per:
            raise _not_coco(path, f"{where} has image_id {_shown(iid)}, which no image has")
        cid = _id(path, ann, "category_id", where)
        if cid not in names:
            raise _not_coco(path, f"{where} has category_id {_shown(cid)}, which no category has")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise _not_coco(path, f"{where} has no 'bbox' of four numbers [x, y, width, height]")
        x, y, w, h = (_to_float(v) for v in bbox)
        ann_id = ann.get("id", position)
        per[iid].append(([x, y, x + w, y + h], names[cid], ann_id if ann_id is not None else position))

    out = []
    for iid, im in entries.items():
        where = f"image {_shown(iid)}"
        file_name = im.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise _not_coco(path, f"{where} has no 'file_name' text")
        width, height = (_size(path, im, key, where) for key in ("width", "height"))
        anns = per[iid]
        with np.errstate(over="ignore", invalid="ignore"):
            boxes = np.array([a[0] for a in anns], dtype=float).reshape(-1, 4)
        out.append(
            CocoImage(
                file_name,
                width,
                height,
                boxes,
                tuple(a[1] for a in anns),
                image_id=iid,
                annotation_ids=tuple(a[2] for a in anns),
            )
        )
    return out


def _shown(value: int | str) -> str:
    """An id as a short one-line ``repr`` for messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _not_coco(path: str | Path, why: str) -> InputError:
    return InputError(path, f"not a COCO detection file ({why})")


def _objects(path: str | Path, doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """``doc[key]``, checked to be a list of JSON objects."""
    value = doc.get(key)
    if not isinstance(value, list):
        raise _not_coco(path, f"no {key!r} list")
    for k, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise _not_coco(path, f"{key} entry {k} is not an object")
    return value


def _id(path: str | Path, entry: dict[str, Any], key: str, where: str) -> int | str:
    """An id field: an integer or a string (COCO uses integers)."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _not_coco(path, f"{where} has no {key!r} (an integer)")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_float(value: int | float) -> float:
    """``float(value)``; integers too large for a float become +-inf (a box with no area)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _size(path: str | Path, image: dict[str, Any], key: str, where: str) -> int:
    """An image's ``width`` or ``height``: a positive whole number of pixels."""
    value = image.get(key)
    if _is_number(value) and math.isfinite(_to_float(value)) and float(value).is_integer() and value > 0:
        return int(value)
    raise _not_coco(path, f"{where} has no {key!r} (a positive number of pixels)")
