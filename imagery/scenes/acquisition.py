"""The acquisition date of a scene, from its metadata or its file and directory names.

Sources, in order:

1. GeoTIFF metadata that names the acquisition: ``ACQUISITIONDATETIME``,
   ``ACQUISITION_DATE``, ``DATE_ACQUIRED``, ``SENSING_TIME``, ``DATATAKE_SENSING_START``...
2. A date in the scene's file or directory name, or its band files' names:
   ``20240115``, ``2024-01-15`` or ``2024_01_15``, also inside Sentinel-2 product names
   (``S2A_MSIL2A_20240115T052141_..._20240115T080020``: the first date is the sensing date).
3. ``TIFFTAG_DATETIME`` (often the file's creation time, hence last).

A scene with none of these has no date (``None``): its detections form one "undated" group.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from pathlib import Path

from sitewatch.imagery.scenes.scene import Scene

#: Metadata keys naming the acquisition time, tried in order (case-insensitive).
ACQUISITION_KEYS = (
    "ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "ACQUISITION_DATE", "ACQUISITIONDATE", "DATE_ACQUIRED",
    "SENSING_TIME", "SENSING_DATE", "DATATAKE_SENSING_START", "PRODUCT_START_TIME", "DATETIME_ACQUIRED",
)
#: Metadata keys tried after the names.
FALLBACK_KEYS = ("TIFFTAG_DATETIME",)

# A year 1970-2099, month and day, either without separators or with one repeated separator,
# not inside a longer run of digits.
_NAME_DATE = re.compile(r"(?<!\d)((?:19[7-9]|20\d)\d)([-_]?)(0[1-9]|1[0-2])\2(0[1-9]|[12]\d|3[01])(?!\d)")
# Metadata values: 2024-01-15, 2024:01:15 (TIFF), 2024/01/15, 20240115, each maybe with a time.
_META_DATE = re.compile(r"^\s*((?:19|20)\d\d)[-:/_]?(0[1-9]|1[0-2])[-:/_]?(0[1-9]|[12]\d|3[01])(?!\d)")


def date_in_name(name: str) -> str | None:
    """The first valid date in ``name`` as ``YYYY-MM-DD``, or ``None``."""
    for m in _NAME_DATE.finditer(name):
        d = _valid(m.group(1), m.group(3), m.group(4))
        if d:
            return d
    return None


def date_in_metadata(tags: dict[str, str], keys: Iterable[str]) -> str | None:
    """The date of the first of ``keys`` present in ``tags`` (any case) that holds a valid date."""
    upper = {k.upper(): v for k, v in tags.items()}
    for key in keys:
        value = upper.get(key)
        if value:
            m = _META_DATE.match(str(value))
            d = _valid(*m.groups()) if m else None
            if d:
                return d
    return None


def acquisition_date(scene: Scene) -> str | None:
    """The scene's acquisition date as ``YYYY-MM-DD`` (see the module docstring), or ``None``."""
    tags = _tags(scene.files)
    found = date_in_metadata(tags, ACQUISITION_KEYS)
    if found:
        return found
    names = [scene.name, Path(scene.source).name, *(Path(f).name for f in scene.files)]
    for name in names:
        found = date_in_name(name)
        if found:
            return found
    return date_in_metadata(tags, FALLBACK_KEYS)


def _valid(year: str, month: str, day: str) -> str | None:
    try:
        return dt.date(int(year), int(month), int(day)).isoformat()
    except ValueError:
        return None


def _tags(files: Iterable[str]) -> dict[str, str]:
    """Dataset-level metadata of the scene's files (the first file's value wins); unreadable files give none."""
    import rasterio
    from rasterio.errors import RasterioError

    out: dict[str, str] = {}
    for f in files:
        try:
            with rasterio.open(f) as src:
                for k, v in src.tags().items():
                    out.setdefault(k, v)
        except (RasterioError, OSError):
            continue
    return out
