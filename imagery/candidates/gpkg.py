"""A minimal GeoPackage 1.3 writer and reader on the standard library's ``sqlite3``.

Enough of the OGC GeoPackage encoding for QGIS, GDAL and ``pyogrio`` to open the file
directly: the ``application_id``/``user_version`` pragmas, ``gpkg_spatial_ref_sys`` with
the three required rows (EPSG:4326 among them), ``gpkg_contents``,
``gpkg_geometry_columns``, and geometry blobs as the GeoPackage binary header followed by
little-endian WKB. No spatial index (R-tree) is written; GDAL and QGIS read without one.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import struct
from collections.abc import Sequence

import shapely
from shapely.geometry.base import BaseGeometry

#: ``PRAGMA application_id``: the ASCII letters "GPKG".
APPLICATION_ID = 0x47504B47
#: ``PRAGMA user_version`` of GeoPackage 1.3.0.
USER_VERSION = 10300
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


def now_iso() -> str:
    """The current UTC time as GeoPackage ``DATETIME`` text: ``2024-05-01T09:30:00.123Z``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
