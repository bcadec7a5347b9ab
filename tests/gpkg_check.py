"""An OGC GeoPackage validity check of our own, for the tests (GDAL's ``validate_gpkg.py`` where found).

:func:`gpkg_problems` reads a GeoPackage with ``sqlite3`` and returns one line per broken
requirement (empty: valid), covering what sitewatch writes: the header pragmas, the core
tables and their SRS rows, ``gpkg_contents`` (kinds, SRS, extents that hold every geometry,
``last_change`` format), ``gpkg_geometry_columns``, every geometry blob (``GP`` magic,
version, flags, envelope, SRS id, WKB of the declared type), the ``gpkg_rtree_index``
extension (R-tree rows matching the table's, the triggers of the file's GeoPackage
version), ``gpkg_extensions``, ``DATE``/``DATETIME`` text, QGIS's ``layer_styles``, and
SQLite's own integrity and foreign-key checks.

:func:`gdal_validator` finds GDAL's own ``validate_gpkg.py`` (``$SITEWATCH_VALIDATE_GPKG``,
an installed ``osgeo_utils``, or Debian's ``python3-gdal``) when it knows GeoPackage 1.4.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import struct
from contextlib import closing
from pathlib import Path

import shapely

APPLICATION_ID = 0x47504B47
GEOMETRY_TYPES = {"GEOMETRY", "POINT", "LINESTRING", "POLYGON", "MULTIPOINT", "MULTILINESTRING", "MULTIPOLYGON",
                  "GEOMETRYCOLLECTION"}
DATA_TYPES = {"features", "attributes", "tiles", "2d-gridded-coverage"}
#: GeoPackage DATETIME: ISO 8601 UTC with a ``Z`` (milliseconds optional, as GDAL reads it).
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{1,3})?)?Z$")
DATE = re.compile(r"^\d{4}-\d\d-\d\d$")
_ENVELOPE_DOUBLES = {0: 0, 1: 4, 2: 6, 3: 6, 4: 8}

#: Where GDAL's validator may be, besides $SITEWATCH_VALIDATE_GPKG and an installed osgeo_utils.
VALIDATOR_PATHS = (
    # GDAL 3.13.3's validator (MIT, from the gdal-utils wheel), kept in the tests so that CI
    # always runs it; it needs only sqlite3 for vector GeoPackages (GDAL's Python bindings,
    # where present, add checks of tiled rasters, which sitewatch does not write).
    str(Path(__file__).with_name("third_party") / "validate_gpkg.py"),
    "/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py",
    "/usr/share/doc/python3-gdal/examples/validate_gpkg.py",
)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}


def gpkg_problems(path: str | Path) -> list[str]:
    """Every way the GeoPackage at ``path`` breaks the requirements above, one line each."""
    out: list[str] = []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        _header(con, out)
        tables = _tables(con)
        missing = {"gpkg_spatial_ref_sys", "gpkg_contents"} - tables
        if missing:
            return [*out, f"required tables missing: {sorted(missing)}"]
        srs = {r[0] for r in con.execute("SELECT srs_id FROM gpkg_spatial_ref_sys")}
        if not {-1, 0, 4326} <= srs:
            out.append(f"gpkg_spatial_ref_sys lacks a required row (-1, 0, 4326): has {sorted(srs)}")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        geom_cols = {}
        if "gpkg_geometry_columns" in tables:
            for t, c, kind, sid, z, m in con.execute("SELECT table_name, column_name, geometry_type_name, srs_id, z, m "
                                                      "FROM gpkg_geometry_columns"):
                geom_cols[t] = (c, kind.upper(), sid)
                if kind.upper() not in GEOMETRY_TYPES:
                    out.append(f"{t}.{c}: geometry type {kind!r} is not a GeoPackage type")
                if sid not in srs:
                    out.append(f"{t}.{c}: srs_id {sid} not in gpkg_spatial_ref_sys")
                if z not in (0, 1, 2) or m not in (0, 1, 2):
                    out.append(f"{t}.{c}: z/m flags {z}/{m} not 0, 1 or 2")
        rows = con.execute("SELECT table_name, data_type, identifier, last_change, min_x, min_y, max_x, max_y, srs_id "
                           "FROM gpkg_contents").fetchall()
        identifiers = [r[2] for r in rows if r[2] is not None]
        if len(identifiers) != len(set(identifiers)):
            out.append("gpkg_contents: identifiers are not unique")
        for table, kind, _, last_change, x0, y0, x1, y1, sid in rows:
            if table not in tables:
                out.append(f"gpkg_contents names {table}, which does not exist")
                continue
            if kind not in DATA_TYPES:
                out.append(f"gpkg_contents: {table} has data_type {kind!r}")
            if not isinstance(last_change, str) or not DATETIME.match(last_change):
                out.append(f"gpkg_contents: {table}.last_change {last_change!r} is not a GeoPackage DATETIME")
            if sid is not None and sid not in srs:
                out.append(f"gpkg_contents: {table} srs_id {sid} not in gpkg_spatial_ref_sys")
            if kind == "features":
                if table not in geom_cols:
                    out.append(f"{table}: a features table without a gpkg_geometry_columns row")
                    continue
                if sid != geom_cols[table][2]:
                    out.append(f"{table}: gpkg_contents srs_id {sid} differs from its geometry column's {geom_cols[table][2]}")
                _geometries(con, table, geom_cols[table], (x0, y0, x1, y1), version, out)
            _dates(con, table, out)
        _extensions(con, tables, out)
        if "layer_styles" in tables:
            kinds = {r[0]: r[1] for r in rows}
            if kinds.get("layer_styles") != "attributes":
                out.append("layer_styles is not registered in gpkg_contents as an attributes table")
            for (t,) in con.execute("SELECT DISTINCT f_table_name FROM layer_styles"):
                if kinds.get(t) != "features":
                    out.append(f"layer_styles: a style for {t}, which is no features table")
        integrity = con.execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            out.append(f"PRAGMA integrity_check: {integrity[:3]}")
        fk = con.execute("PRAGMA foreign_key_check").fetchall()
        if fk:
            out.append(f"PRAGMA foreign_key_check: {fk[:3]}")
    return out


def _header(con: sqlite3.Connection, out: list[str]) -> None:
    app = con.execute("PRAGMA application_id").fetchone()[0]
    if app != APPLICATION_ID:
        out.append(f"application_id is {app:#x}, not 'GPKG' ({APPLICATION_ID:#x})")
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if not 10200 <= version < 10500:
        out.append(f"user_version {version} is no GeoPackage 1.2-1.4 version")


def _geometries(con: sqlite3.Connection, table: str, col: tuple[str, str, int], extent: tuple, version: int,
                out: list[str]) -> None:
    column, kind, sid = col
    x0, y0, x1, y1 = extent
    bounds: dict[int, tuple[float, float, float, float]] = {}
    bad = 0
    for fid, blob in con.execute(f"SELECT rowid, {_q(column)} FROM {_q(table)}"):  # noqa: S608
        if blob is None:
            continue
        problem = _blob_problem(bytes(blob), sid, kind)
        if isinstance(problem, str):
            bad += 1
            if bad <= 3:
                out.append(f"{table} fid {fid}: {problem}")
            continue
        if problem is not None:
            bounds[fid] = problem
    if bounds and x0 is not None:
        tol = 1e-9
        outside = [f for f, (a, b, c, d) in bounds.items()
                   if a < x0 - tol or b < y0 - tol or c > x1 + tol or d > y1 + tol]
        if outside:
            out.append(f"{table}: {len(outside)} geometries outside the gpkg_contents extent")
    _rtree(con, table, column, bounds, version, out)


def _blob_problem(blob: bytes, sid: int, kind: str) -> str | tuple[float, float, float, float] | None:
    """A problem with one geometry blob, else its bounds (``None`` when empty)."""
    if len(blob) < 8 or blob[:2] != b"GP":
        return "no GP magic"
    if blob[2] != 0:
        return f"blob version {blob[2]}, not 0"
    flags = blob[3]
    if flags & 0b100000:
        return "extended (non-standard) geometry type flag set"
    code = (flags >> 1) & 0b111
    if code not in _ENVELOPE_DOUBLES:
        return f"invalid envelope code {code}"
    order = "<" if flags & 1 else ">"
    (header_srs,) = struct.unpack(order + "i", blob[4:8])
    if header_srs != sid:
        return f"header srs_id {header_srs} differs from the column's {sid}"
    n = _ENVELOPE_DOUBLES[code]
    envelope = struct.unpack(order + f"{n}d", blob[8 : 8 + 8 * n]) if n else ()
    try:
        geom = shapely.from_wkb(blob[8 + 8 * n :])
    except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
        return f"WKB does not parse ({exc})"
    empty = bool(flags & 0b10000)
    if empty != geom.is_empty:
        return f"empty flag {int(empty)} but the WKB is {'empty' if geom.is_empty else 'not empty'}"
    if kind != "GEOMETRY" and geom.geom_type.upper() != kind:
        return f"a {geom.geom_type} in a {kind} column"
    if geom.is_empty:
        return None
    gx0, gy0, gx1, gy1 = geom.bounds
    if envelope and not all(abs(a - b) <= 1e-9 for a, b in zip(envelope[:4], (gx0, gx1, gy0, gy1), strict=True)):
        return f"header envelope {envelope[:4]} differs from the geometry's bounds"
    return gx0, gy0, gx1, gy1


def _rtree(con: sqlite3.Connection, table: str, column: str, bounds: dict[int, tuple], version: int,
           out: list[str]) -> None:
    rtree = f"rtree_{table}_{column}"
    declared = "gpkg_extensions" in _tables(con) and con.execute(
        "SELECT scope FROM gpkg_extensions WHERE table_name = ? AND column_name = ? AND extension_name = 'gpkg_rtree_index'",
        (table, column)).fetchone()
    present = rtree in _tables(con)
    if not declared and not present:
        return
    if not declared or not present:
        out.append(f"{table}: R-tree {'declared but missing' if declared else 'present but not in gpkg_extensions'}")
        return
    if declared[0] != "write-only":
        out.append(f"{table}: gpkg_rtree_index scope {declared[0]!r}, not 'write-only'")
    rows = {r[0]: r[1:] for r in con.execute(f"SELECT id, minx, maxx, miny, maxy FROM {_q(rtree)}")}  # noqa: S608
    if set(rows) != set(bounds):
        out.append(f"{table}: R-tree holds {len(rows)} rows for {len(bounds)} non-empty geometries "
                   f"({len(set(bounds) - set(rows))} missing, {len(set(rows) - set(bounds))} extra)")
    for fid, (gx0, gy0, gx1, gy1) in bounds.items():  # an R-tree stores float32, rounded outwards
        r = rows.get(fid)
        if r is not None and not (r[0] <= gx0 + 1e-9 and r[1] >= gx1 - 1e-9 and r[2] <= gy0 + 1e-9 and r[3] >= gy1 - 1e-9):
            out.append(f"{table} fid {fid}: R-tree box {r} does not hold the geometry")
            break
    numbers = (2, 4, 5, 6, 7) if version >= 10400 else (1, 2, 3, 4)
    triggers = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,))}
    wanted = {f"{rtree}_insert", f"{rtree}_delete", *(f"{rtree}_update{k}" for k in numbers)}
    if wanted - triggers:
        out.append(f"{table}: R-tree triggers missing for GeoPackage {version}: {sorted(wanted - triggers)}")
    stray = {t for t in triggers if t.startswith(f"{rtree}_update")} - wanted
    if stray:
        out.append(f"{table}: R-tree triggers of another GeoPackage version than {version}: {sorted(stray)}")


def _dates(con: sqlite3.Connection, table: str, out: list[str]) -> None:
    for _, name, decl, *_ in con.execute(f"PRAGMA table_info({_q(table)})").fetchall():
        pattern = {"DATETIME": DATETIME, "DATE": DATE}.get((decl or "").upper())
        if pattern is None:
            continue
        for (value,) in con.execute(f"SELECT {_q(name)} FROM {_q(table)} WHERE {_q(name)} IS NOT NULL"):  # noqa: S608
            if not isinstance(value, str) or not pattern.match(value):
                out.append(f"{table}.{name}: {value!r} is not a GeoPackage {decl.upper()}")
                break


def _extensions(con: sqlite3.Connection, tables: set[str], out: list[str]) -> None:
    if "gpkg_extensions" not in tables:
        return
    for t, c, name, scope in con.execute("SELECT table_name, column_name, extension_name, scope FROM gpkg_extensions"):
        if scope not in ("read-write", "write-only"):
            out.append(f"gpkg_extensions: {name} has scope {scope!r}")
        if t is not None and t not in tables:
            out.append(f"gpkg_extensions: {name} names table {t}, which does not exist")
        elif t is not None and c is not None and c not in {r[1] for r in con.execute(f"PRAGMA table_info({_q(t)})")}:
            out.append(f"gpkg_extensions: {name} names column {t}.{c}, which does not exist")


def gdal_validator() -> Path | None:
    """GDAL's ``validate_gpkg.py``, where one that knows GeoPackage 1.4 (GDAL >= 3.7) is found."""
    candidates = [os.environ.get("SITEWATCH_VALIDATE_GPKG", "")]
    try:
        spec = importlib.util.find_spec("osgeo_utils.samples.validate_gpkg")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        candidates.append(spec.origin)
    candidates.extend(VALIDATOR_PATHS)
    for c in candidates:
        if c and Path(c).is_file() and "(2, 4, 5, 6, 7)" in Path(c).read_text(errors="replace"):
            return Path(c)
    return None
