"""``sitewatch export``: sites of a candidate store as GeoJSON, GeoPackage or CSV.

Each site is written with its footprint (the hull of its detection boxes) as a Polygon,
or its point as ``lon``/``lat`` in CSV, and the properties ``site_id``, ``class``,
``status``, ``date``, ``first_seen``, ``last_seen``, ``scenes``, ``n_detections``,
``max_score``, ``mean_score``, ``lon``, ``lat``, ``reviewer``, ``reviewed_at`` and ``note``.

A GeoJSON export is directly usable as labels for ``sitewatch train``/``evaluate``:
``confirmed`` sites become objects (their footprint's bounding box), ``rejected`` sites
hard negatives, the others are not used (see :mod:`sitewatch.training.labels`).

Files are written under a temporary name beside ``out`` and renamed into place.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shapely.geometry import mapping
from shapely.geometry.polygon import orient

from sitewatch.imagery.candidates.gpkg import add_features_table, connect, geometry_blob, init_geopackage, touch
from sitewatch.imagery.candidates.store import CandidateStore, Site
from sitewatch.imagery.candidates.styles import add_status_style
from sitewatch.imagery.errors import OutputError, UsageError

#: Export formats and the file suffixes that imply them.
FORMATS = {"geojson": (".geojson", ".json"), "gpkg": (".gpkg",), "csv": (".csv",)}
#: Columns of a CSV export, in order.
CSV_COLUMNS = ("site_id", "class", "status", "lon", "lat", "date", "first_seen", "last_seen", "n_detections",
               "max_score", "mean_score", "reviewer", "reviewed_at", "note", "scenes")
_GPKG_COLUMNS = (
    "site_id TEXT NOT NULL UNIQUE", "class TEXT NOT NULL", "status TEXT NOT NULL", "date DATE", "first_seen DATE",
    "last_seen DATE", "scenes TEXT", "n_detections INTEGER", "max_score DOUBLE", "mean_score DOUBLE", "lon DOUBLE",
    "lat DOUBLE", "reviewer TEXT", "reviewed_at DATETIME", "note TEXT",
)


def export_format(out: Path, fmt: str | None) -> str:
    """``fmt``, or the format ``out``'s suffix implies.

    Raises:
        UsageError: an unknown format, or none given and the suffix implies none.
    """
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
        return fmt
    for name, suffixes in FORMATS.items():
        if out.suffix.lower() in suffixes:
            return name
    raise UsageError(f"--out {out}: say --format {'|'.join(FORMATS)} (the suffix implies none)")


def export_sites(
    store: CandidateStore,
    out: str | Path,
    *,
    fmt: str | None = None,
    statuses: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
) -> int:
    """Write the store's sites (optionally only some statuses and classes) to ``out``.

    Args:
        store: the candidate store.
        out: the file to write.
        fmt: ``geojson``, ``gpkg`` or ``csv``; from ``out``'s suffix if ``None``.
        statuses: only sites whose current status is one of these (all if ``None``).
        classes: only sites of these classes (all if ``None``).
        overwrite: replace an existing ``out``.

    Returns:
        The number of sites written.

    Raises:
        UsageError: a bad format or status.
        OutputError: ``out`` exists (without ``overwrite``) or cannot be written.
        InputError: the store's site statuses and review log disagree (see :meth:`CandidateStore.check`).
    """
    out = Path(out)
    fmt = export_format(out, fmt)
    store.require_consistent()
    sites = store.sites(status=list(statuses) if statuses else None, cls=list(classes) if classes else None)
    if out.exists() and (out.is_dir() or not overwrite):
        raise OutputError(f"--out {out}: already exists; pass --overwrite to replace it or choose another file")
    parent = out.parent if str(out.parent) else Path(".")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise OutputError(f"--out {out}: a parent path is a file, not a directory; choose another path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create {parent} ({exc.strerror})") from None
    tmp = parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        if fmt == "geojson":
            tmp.write_text(json.dumps(sites_geojson(sites), ensure_ascii=False) + "\n", encoding="utf-8")
        elif fmt == "csv":
            tmp.write_text(sites_csv(sites), encoding="utf-8", newline="")
        else:
            _write_gpkg(tmp, sites)
        os.replace(tmp, out)
    except (OSError, sqlite3.Error) as exc:
        raise OutputError(f"--out {out}: cannot write ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return len(sites)


def sites_geojson(sites: Sequence[Site]) -> dict[str, Any]:
    """An RFC 7946 FeatureCollection: one Feature per site, its footprint as a counter-clockwise Polygon."""
    features = []
    for s in sites:
        geometry = mapping(orient(s.footprint, 1.0)) if s.footprint is not None else {
            "type": "Point", "coordinates": [s.lon, s.lat]}
        features.append({"type": "Feature", "id": s.site_id, "geometry": _rounded(geometry), "properties": s.properties()})
    return {"type": "FeatureCollection", "features": features}


#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, prefixed with ``'`` (shown as text).

    Only text is changed (notes, reviewer names, scene names); numbers such as a negative
    longitude are written as numbers, which no spreadsheet evaluates.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def sites_csv(sites: Sequence[Site]) -> str:
    """CSV text: a header, then one row per site (``scenes`` joined by ``;``).

    Text cells that start like a formula (``=``, ``+``, ``-``, ``@``, tab, carriage return)
    get a leading ``'`` (:func:`spreadsheet_safe`), so a note such as ``=HYPERLINK(...)``
    stays text when the file is opened in a spreadsheet.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for s in sites:
        row = s.properties()
        row["scenes"] = ";".join(s.scenes)
        w.writerow({k: "" if row[k] is None else spreadsheet_safe(row[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def _write_gpkg(path: Path, sites: Sequence[Site]) -> None:
    """A GeoPackage with one Polygon layer ``sites`` (footprints and properties), coloured by
    review status in QGIS (its default style in ``layer_styles``)."""
    with contextlib.closing(connect(path, isolation_level=None)) as con:
        init_geopackage(con)
        con.execute("BEGIN")
        add_features_table(con, "sites", "POLYGON", _GPKG_COLUMNS, "sitewatch sites (footprints) and reviews")
        add_status_style(con, "sites", polygon=True)
        columns = [c.split()[0] for c in _GPKG_COLUMNS]
        rows = []
        for s in sites:
            p = s.properties()
            p["scenes"] = json.dumps(p["scenes"])
            rows.append((geometry_blob(orient(s.footprint, 1.0)) if s.footprint is not None else None,
                         *(p[c] for c in columns)))
        con.executemany(f"INSERT INTO sites (geom, {', '.join(columns)}) "  # noqa: S608 - fixed column names
                        f"VALUES ({', '.join('?' * (len(columns) + 1))})", rows)
        boxes = [s.footprint.bounds for s in sites if s.footprint is not None]
        if boxes:
            touch(con, "sites", (min(b[0] for b in boxes), min(b[1] for b in boxes),
                                 max(b[2] for b in boxes), max(b[3] for b in boxes)))
        con.execute("COMMIT")


def _rounded(geometry: Any) -> Any:
    """GeoJSON geometry with coordinates rounded to 7 decimals (~1 cm) and as lists."""
    def r(c: Any) -> Any:
        return [r(x) for x in c] if isinstance(c, list | tuple) and c and isinstance(c[0], list | tuple) else \
            [round(float(v), 7) for v in c]
    return {"type": geometry["type"], "coordinates": r(geometry["coordinates"])}
