"""A minimal GeoPackage 1.4 writer and reader on the standard library's ``sqlite3``.

Enough of the OGC GeoPackage encoding for QGIS, GDAL and ``pyogrio`` to open the file
directly: the ``application_id``/``user_version`` pragmas, ``gpkg_spatial_ref_sys`` with
the three required rows (EPSG:4326 among them), ``gpkg_contents``,
``gpkg_geometry_columns``, and geometry blobs as the GeoPackage binary header followed by
little-endian WKB. Every geometry column gets the R-tree spatial index of the
``gpkg_rtree_index`` extension, with the triggers GDAL creates (those of GDAL 3.12), so GDAL
and QGIS report and use it. The triggers call ``ST_IsEmpty``, ``ST_MinX``, ``ST_MaxX``,
``ST_MinY`` and ``ST_MaxY``, which GDAL (and so QGIS) provides: open the file with
:func:`connect`, which registers them, to write to it from Python.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

#: ``PRAGMA application_id``: the ASCII letters "GPKG".
APPLICATION_ID = 0x47504B47
#: ``PRAGMA user_version`` of GeoPackage 1.4.0: the version whose R-tree triggers (``update5``
#: to ``update7`` in place of ``update1``/``update3``) :data:`_RTREE_TRIGGERS` are. GDAL's
#: ``validate_gpkg.py`` refuses those triggers in a file that says it is 1.3.
USER_VERSION = 10400
#: The only CRS sitewatch writes: WGS 84 longitude/latitude.
WGS84 = 4326

_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],'
    'UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)

_CORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (
    srs_name TEXT NOT NULL,
    srs_id INTEGER NOT NULL PRIMARY KEY,
    organization TEXT NOT NULL,
    organization_coordsys_id INTEGER NOT NULL,
    definition TEXT NOT NULL,
    description TEXT
);
CREATE TABLE IF NOT EXISTS gpkg_contents (
    table_name TEXT NOT NULL PRIMARY KEY,
    data_type TEXT NOT NULL,
    identifier TEXT UNIQUE,
    description TEXT DEFAULT '',
    last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    min_x DOUBLE,
    min_y DOUBLE,
    max_x DOUBLE,
    max_y DOUBLE,
    srs_id INTEGER,
    CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id)
);
CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (
    table_name TEXT NOT NULL,
    column_name TEXT NOT NULL,
    geometry_type_name TEXT NOT NULL,
    srs_id INTEGER NOT NULL,
    z TINYINT NOT NULL,
    m TINYINT NOT NULL,
    CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
    CONSTRAINT uk_gc_table_name UNIQUE (table_name),
    CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
    CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id)
);
"""

_SRS_ROWS = (
    ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference system"),
    ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
    ("WGS 84 geodetic", WGS84, "EPSG", WGS84, _WGS84_WKT,
     "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid"),
)


_EXTENSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS gpkg_extensions (
    table_name TEXT,
    column_name TEXT,
    extension_name TEXT NOT NULL,
    definition TEXT NOT NULL,
    scope TEXT NOT NULL,
    CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name)
)
"""
RTREE_EXTENSION = ("gpkg_rtree_index", "http://www.geopackage.org/spec120/#extension_rtree", "write-only")

# GDAL 3.12's triggers of the extension, for table {t}, geometry column {c}, primary key fid.
_RTREE_TRIGGERS = (
    'CREATE TRIGGER "rtree_{t}_{c}_insert" AFTER INSERT ON "{t}" WHEN (new."{c}" NOT NULL AND NOT ST_IsEmpty(NEW."{c}")) '
    'BEGIN INSERT OR REPLACE INTO "rtree_{t}_{c}" VALUES (NEW."fid",ST_MinX(NEW."{c}"), ST_MaxX(NEW."{c}"),'
    'ST_MinY(NEW."{c}"), ST_MaxY(NEW."{c}")); END',
    'CREATE TRIGGER "rtree_{t}_{c}_update6" AFTER UPDATE OF "{c}" ON "{t}" WHEN OLD."fid" = NEW."fid" AND '
    '(NEW."{c}" NOTNULL AND NOT ST_IsEmpty(NEW."{c}")) AND (OLD."{c}" NOTNULL AND NOT ST_IsEmpty(OLD."{c}")) '
    'BEGIN UPDATE "rtree_{t}_{c}" SET minx = ST_MinX(NEW."{c}"), maxx = ST_MaxX(NEW."{c}"),miny = ST_MinY(NEW."{c}"), '
    'maxy = ST_MaxY(NEW."{c}") WHERE id = NEW."fid";END',
    'CREATE TRIGGER "rtree_{t}_{c}_update7" AFTER UPDATE OF "{c}" ON "{t}" WHEN OLD."fid" = NEW."fid" AND '
    '(NEW."{c}" NOTNULL AND NOT ST_IsEmpty(NEW."{c}")) AND (OLD."{c}" ISNULL OR ST_IsEmpty(OLD."{c}")) '
    'BEGIN INSERT INTO "rtree_{t}_{c}" VALUES (NEW."fid",ST_MinX(NEW."{c}"), ST_MaxX(NEW."{c}"),ST_MinY(NEW."{c}"), '
    'ST_MaxY(NEW."{c}")); END',
    'CREATE TRIGGER "rtree_{t}_{c}_update2" AFTER UPDATE OF "{c}" ON "{t}" WHEN OLD."fid" = NEW."fid" AND '
    '(NEW."{c}" ISNULL OR ST_IsEmpty(NEW."{c}")) BEGIN DELETE FROM "rtree_{t}_{c}" WHERE id = OLD."fid"; END',
    'CREATE TRIGGER "rtree_{t}_{c}_update5" AFTER UPDATE ON "{t}" WHEN OLD."fid" != NEW."fid" AND '
    '(NEW."{c}" NOTNULL AND NOT ST_IsEmpty(NEW."{c}")) BEGIN DELETE FROM "rtree_{t}_{c}" WHERE id = OLD."fid"; '
    'INSERT OR REPLACE INTO "rtree_{t}_{c}" VALUES (NEW."fid",ST_MinX(NEW."{c}"), ST_MaxX(NEW."{c}"),'
    'ST_MinY(NEW."{c}"), ST_MaxY(NEW."{c}")); END',
    'CREATE TRIGGER "rtree_{t}_{c}_update4" AFTER UPDATE ON "{t}" WHEN OLD."fid" != NEW."fid" AND '
    '(NEW."{c}" ISNULL OR ST_IsEmpty(NEW."{c}")) BEGIN DELETE FROM "rtree_{t}_{c}" WHERE id IN (OLD."fid", NEW."fid"); END',
    'CREATE TRIGGER "rtree_{t}_{c}_delete" AFTER DELETE ON "{t}" WHEN old."{c}" NOT NULL '
    'BEGIN DELETE FROM "rtree_{t}_{c}" WHERE id = OLD."fid"; END',
)


def _envelope(blob: bytes | None) -> tuple[float, float, float, float] | None:
    """``(minx, maxx, miny, maxy)`` of a GeoPackage geometry blob; ``None`` for NULL or empty."""
    if blob is None or len(blob) < 8 or blob[:2] != b"GP":
        return None
    flags = blob[3]
    if flags & 0b10000:
        return None
    if (flags >> 1) & 0b111:  # the header's envelope: minx, maxx, miny, maxy
        order = "<" if flags & 1 else ">"
        return struct.unpack(order + "4d", blob[8:40])
    geom = read_geometry(bytes(blob))
    if geom is None or geom.is_empty:
        return None
    x0, y0, x1, y1 = geom.bounds
    return x0, x1, y0, y1


def _part(k: int):  # type: ignore[no-untyped-def]
    def f(blob: bytes | None) -> float | None:
        env = _envelope(blob)
        return None if env is None else env[k]
    return f


def register_functions(con: sqlite3.Connection) -> None:
    """Give ``con`` the SQL functions the R-tree triggers call (GDAL provides the same)."""
    con.create_function("ST_IsEmpty", 1, lambda b: None if b is None else int(_envelope(b) is None), deterministic=True)
    for k, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        con.create_function(name, 1, _part(k), deterministic=True)


def connect(path: str | Path, **kwargs: Any) -> sqlite3.Connection:
    """``sqlite3.connect`` with :func:`register_functions`: how sitewatch opens a GeoPackage."""
    con = sqlite3.connect(path, **kwargs)
    register_functions(con)
    return con


def has_spatial_index(con: sqlite3.Connection, table: str, column: str = "geom") -> bool:
    """Whether ``table.column`` has the ``gpkg_rtree_index`` extension and its R-tree."""
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "gpkg_extensions" not in tables or f"rtree_{table}_{column}" not in tables:
        return False
    return con.execute("SELECT 1 FROM gpkg_extensions WHERE table_name = ? AND column_name = ? AND extension_name = ?",
                       (table, column, RTREE_EXTENSION[0])).fetchone() is not None


def add_spatial_index(con: sqlite3.Connection, table: str, column: str = "geom") -> None:
    """Create the R-tree spatial index of ``table.column`` as GDAL does, filled with its rows.

    ``con`` needs :func:`register_functions`. A no-op when the index exists.
    """
    if has_spatial_index(con, table, column):
        return
    con.execute(_EXTENSIONS_SCHEMA)
    con.execute(f'CREATE VIRTUAL TABLE "rtree_{table}_{column}" USING rtree(id, minx, maxx, miny, maxy)')
    con.execute(f'INSERT INTO "rtree_{table}_{column}" SELECT fid, ST_MinX("{column}"), ST_MaxX("{column}"), '  # noqa: S608
                f'ST_MinY("{column}"), ST_MaxY("{column}") FROM "{table}" WHERE "{column}" NOT NULL '
                f'AND NOT ST_IsEmpty("{column}")')
    for sql in _RTREE_TRIGGERS:
        con.execute(sql.format(t=table, c=column))
    con.execute("INSERT INTO gpkg_extensions VALUES (?, ?, ?, ?, ?)", (table, column, *RTREE_EXTENSION))


def now_iso() -> str:
    """The current UTC time as GeoPackage ``DATETIME`` text: ``2024-05-01T09:30:00.123Z``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def gpkg_datetime(value: str | None) -> str | None:
    """An ISO 8601 time as the GeoPackage standard writes ``DATETIME``: UTC, milliseconds, ``Z``.

    ``2024-05-01T09:30:00.123456+00:00`` becomes ``2024-05-01T09:30:00.123Z`` (GDAL warns of
    "non-conformant content" for microseconds); a time without a zone is taken as UTC; text
    that is not a time is returned as it is.
    """
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    t = t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def init_geopackage(con: sqlite3.Connection) -> None:
    """Make an empty SQLite database a GeoPackage: pragmas and the core tables (idempotent)."""
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    con.execute(f"PRAGMA user_version = {USER_VERSION}")
    con.executescript(_CORE_SCHEMA)
    con.executemany("INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", _SRS_ROWS)


def is_geopackage(con: sqlite3.Connection) -> bool:
    """Whether the database carries the GeoPackage application id and core tables."""
    app_id = con.execute("PRAGMA application_id").fetchone()[0]
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return app_id == APPLICATION_ID and {"gpkg_contents", "gpkg_geometry_columns"} <= tables


def add_features_table(
    con: sqlite3.Connection, table: str, geometry_type: str, columns: Sequence[str], description: str = ""
) -> None:
    """Create a features layer ``table``: ``fid``, a ``geom`` column and ``columns`` (SQL definitions)."""
    body = ",\n    ".join(["fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL", f"geom {geometry_type}", *columns])
    con.execute(f'CREATE TABLE "{table}" (\n    {body}\n)')
    con.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) VALUES (?, 'features', ?, ?, ?)",
        (table, table, description, WGS84),
    )
    con.execute(
        "INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, ?, 0, 0)", (table, geometry_type, WGS84)
    )
    add_spatial_index(con, table)


def add_attributes_table(
    con: sqlite3.Connection, table: str, columns: Sequence[str], description: str = "", pk: str = "fid"
) -> None:
    """Create an attributes (non-spatial) table ``table`` with integer primary key ``pk``."""
    body = ",\n    ".join([f"{pk} INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL", *columns])
    con.execute(f'CREATE TABLE "{table}" (\n    {body}\n)')
    con.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description) VALUES (?, 'attributes', ?, ?)",
        (table, table, description),
    )


#: QGIS's table of layer styles, as QGIS creates it in a GeoPackage (an attributes table).
LAYER_STYLES = "layer_styles"
_LAYER_STYLE_COLUMNS = (
    "f_table_catalog TEXT(256)", "f_table_schema TEXT(256)", "f_table_name TEXT(256)",
    "f_geometry_column TEXT(256)", "styleName TEXT(30)", "styleQML TEXT", "styleSLD TEXT", "useAsDefault BOOLEAN",
    "description TEXT", "owner TEXT(30)", "ui TEXT(30)", "update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))",
)


def add_layer_style(con: sqlite3.Connection, table: str, name: str, qml: str, sld: str = "",
                    description: str = "", *, column: str = "geom", default: bool = True) -> None:
    """Store a QGIS style (QML, and SLD) for ``table.column`` in the ``layer_styles`` table.

    The table is created as QGIS creates it (and registered in ``gpkg_contents`` as an
    attributes table) when missing. A style of the same name for the same layer is
    replaced; with ``default``, it becomes the layer's only default style, which QGIS
    applies when the layer is opened. Catalog and schema are empty, as QGIS writes them.
    """
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if LAYER_STYLES not in tables:
        add_attributes_table(con, LAYER_STYLES, _LAYER_STYLE_COLUMNS, "QGIS layer styles", pk="id")
    if default:
        con.execute(f"UPDATE {LAYER_STYLES} SET useAsDefault = 0 WHERE f_table_name = ? AND f_geometry_column = ?",  # noqa: S608
                    (table, column))
    con.execute(f"DELETE FROM {LAYER_STYLES} WHERE f_table_name = ? AND f_geometry_column = ? AND styleName = ?",  # noqa: S608
                (table, column, name))
    con.execute(
        f"INSERT INTO {LAYER_STYLES} (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "  # noqa: S608
        "styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, ?, ?, ?, '', NULL, ?)",
        (table, column, name, qml, sld, int(default), description, now_iso()),
    )
    touch(con, LAYER_STYLES)


def touch(con: sqlite3.Connection, table: str, bounds: tuple[float, float, float, float] | None = None) -> None:
    """Record a change to ``table`` in ``gpkg_contents``; widen its extent to cover ``bounds``."""
    if bounds is None:
        con.execute("UPDATE gpkg_contents SET last_change = ? WHERE table_name = ?", (now_iso(), table))
        return
    x0, y0, x1, y1 = bounds
    con.execute(
        """UPDATE gpkg_contents SET last_change = ?,
               min_x = min(coalesce(min_x, ?), ?), min_y = min(coalesce(min_y, ?), ?),
               max_x = max(coalesce(max_x, ?), ?), max_y = max(coalesce(max_y, ?), ?)
           WHERE table_name = ?""",
        (now_iso(), x0, x0, y0, y0, x1, x1, y1, y1, table),
    )


def geometry_blob(geom: BaseGeometry, srs_id: int = WGS84) -> bytes:
    """GeoPackage binary geometry: the ``GP`` header (with an xy envelope, except for points) + WKB."""
    wkb = shapely.to_wkb(geom, byte_order=1)
    if geom.is_empty:
        return struct.pack("<2sBBi", b"GP", 0, 0b10001, srs_id) + wkb
    if geom.geom_type == "Point":
        return struct.pack("<2sBBi", b"GP", 0, 0b00001, srs_id) + wkb
    x0, y0, x1, y1 = geom.bounds
    return struct.pack("<2sBBi4d", b"GP", 0, 0b00011, srs_id, x0, x1, y0, y1) + wkb


def read_geometry(blob: bytes | None) -> BaseGeometry | None:
    """The geometry of a GeoPackage binary blob (``None`` for ``NULL``)."""
    if blob is None:
        return None
    if blob[:2] != b"GP":
        raise ValueError("not a GeoPackage geometry blob (no GP magic)")
    flags = blob[3]
    envelope_bytes = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(flags >> 1) & 0b111]
    return shapely.from_wkb(blob[8 + envelope_bytes:])
