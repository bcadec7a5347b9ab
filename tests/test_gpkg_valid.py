"""The GeoPackages sitewatch writes are valid (our own check, and GDAL's validate_gpkg.py where
found), read without a GDAL warning, and carry QGIS's layer style for sites by review status."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from contextlib import closing
from pathlib import Path

import pyogrio
import pytest
from gpkg_check import gdal_validator, gpkg_problems

from sitewatch.imagery.candidates.density import density, write_density
from sitewatch.imagery.candidates.export import export_sites
from sitewatch.imagery.candidates.gpkg import LAYER_STYLES, USER_VERSION
from sitewatch.imagery.candidates.gpkg import connect as gpkg_connect
from sitewatch.imagery.candidates.store import GEOMETRY_LAYERS, STATUSES, CandidateStore
from sitewatch.imagery.candidates.styles import STATUS_STYLE, status_qml, status_sld

LON0, LAT0, STEP = 88.40, 22.60, 0.01


@pytest.fixture
def files(tmp_path: Path, add_scene) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """A store with two scenes and two reviews, its sites exported as GeoPackage, and its density cells."""
    store = CandidateStore.create(tmp_path / "candidates.gpkg")
    add_scene(store, "s1", [("kiln", LON0 + i * STEP, LAT0, 0.5 + 0.1 * i) for i in range(3)]
              + [("vessel", LON0, LAT0 + 0.05, 0.9)], acquired="2024-01-05")
    add_scene(store, "s2", [("kiln", LON0, LAT0, 0.7), ("vessel", LON0 + STEP, LAT0 + 0.05, 0.6)], acquired="2024-02-10")
    store.review("kiln-000001", "confirmed", "ana", "brick chimney")
    store.review("kiln-000002", "rejected", "ana")
    export_sites(store, tmp_path / "sites.gpkg")
    write_density(density(store, 1000.0), tmp_path / "density.gpkg")
    return {"store": store.path, "export": tmp_path / "sites.gpkg", "density": tmp_path / "density.gpkg"}


def test_our_check_passes_on_every_geopackage_sitewatch_writes(files: dict[str, Path]) -> None:
    for name, path in files.items():
        assert gpkg_problems(path) == [], name
    with closing(sqlite3.connect(files["store"])) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == USER_VERSION == 10400


def test_gdal_validate_gpkg_passes(files: dict[str, Path]) -> None:
    script = gdal_validator()
    if script is None:
        pytest.skip("GDAL's validate_gpkg.py (GDAL >= 3.7) not found: set SITEWATCH_VALIDATE_GPKG to it, or "
                    "pip install --no-deps gdal-utils (its osgeo_utils/samples/validate_gpkg.py)")
    for name, path in files.items():
        proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and not proc.stderr.strip(), (name, proc.stdout, proc.stderr)


def test_our_check_catches_what_gdal_would_refuse(files: dict[str, Path], tmp_path: Path) -> None:
    """Each edit breaks one requirement, and the check names it."""
    edits = {
        "application_id": ("PRAGMA application_id = 0", "application_id"),
        "version of the triggers": ("PRAGMA user_version = 10300", "another GeoPackage version"),
        "R-tree row": ("DELETE FROM rtree_sites_geom WHERE id = (SELECT min(id) FROM rtree_sites_geom)", "R-tree holds"),
        "trigger": ("DROP TRIGGER rtree_detections_geom_insert", "R-tree triggers missing"),
        "datetime": ("UPDATE runs SET started_at = '2024-01-01 10:00:00.123456+00:00'", "runs.started_at"),
        "magic": (lambda b: b"XX" + b[2:], "no GP magic"),
        "header srs": (lambda b: b[:4] + bytes(4) + b[8:], "header srs_id 0"),
        "envelope": (lambda b: b[:8] + bytes(8) + b[16:], "header envelope"),
        "extent": ("UPDATE gpkg_contents SET max_x = min_x WHERE table_name = 'detections'", "outside the gpkg_contents"),
        "style table": ("UPDATE gpkg_contents SET data_type = 'features' WHERE table_name = 'layer_styles'",
                        "layer_styles is not registered"),
    }
    for name, (sql, expected) in edits.items():
        copy = tmp_path / f"{name.replace(' ', '_')}.gpkg"
        shutil.copy(files["store"], copy)
        with closing(gpkg_connect(copy)) as con:  # with the SQL functions the R-tree triggers call
            if callable(sql):  # an edit of one footprint's geometry blob
                blob = con.execute("SELECT geom FROM site_footprints WHERE fid = 1").fetchone()[0]
                con.execute("UPDATE site_footprints SET geom = ? WHERE fid = 1", (sql(bytes(blob)),))
            else:
                con.executescript(sql)
            con.commit()
        problems = gpkg_problems(copy)
        assert any(expected in p for p in problems), (name, problems)


def test_reading_every_layer_raises_no_gdal_warning(files: dict[str, Path]) -> None:
    """pyogrio turns each GDAL warning (CE_Warning, e.g. "Non-conformant content") into a
    RuntimeWarning: as errors, one would fail the read."""
    for path in files.values():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for layer, _ in pyogrio.list_layers(path):
                info = pyogrio.read_info(path, layer=layer, force_feature_count=True)
                pyogrio.raw.read(path, layer=layer)
                if info["geometry_type"] is not None:
                    assert info["capabilities"]["fast_spatial_filter"], (path.name, layer)
    for layer in GEOMETRY_LAYERS:
        assert pyogrio.read_info(files["store"], layer=layer)["capabilities"]["fast_spatial_filter"], layer


# --- the QGIS layer style -----------------------------------------------------------------------


def _styles(path: Path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as con:
        return con.execute(f"SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "  # noqa: S608
                           f"styleQML, styleSLD, useAsDefault, description, update_time FROM {LAYER_STYLES}").fetchall()


def _categories(qml: str) -> tuple[str, dict[str, str], str]:
    root = ET.fromstring(qml)  # noqa: S314 - our own text
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "categorizedSymbol"
    cats = {c.get("value"): c.get("symbol") for c in renderer.iter("category")}
    kinds = {s.get("type") for s in renderer.iter("symbol")}
    assert len(kinds) == 1
    return renderer.get("attr") or "", cats, kinds.pop() or ""


@pytest.mark.parametrize("which, geometry, symbol", [("store", "geom", "marker"), ("export", "geom", "fill")])
def test_sites_carry_a_default_qgis_style_by_review_status(files: dict[str, Path], which: str, geometry: str,
                                                           symbol: str) -> None:
    rows = _styles(files[which])
    assert len(rows) == 1
    catalog, schema, table, column, name, qml, sld, default, description, updated = rows[0]
    assert (catalog, schema, table, column, name, default) == ("", "", "sites", geometry, STATUS_STYLE, 1)
    assert description and updated.endswith("Z")
    attr, cats, kind = _categories(qml)
    assert attr == "status" and set(cats) == set(STATUSES) and len(set(cats.values())) == len(STATUSES)
    assert kind == symbol
    sld_root = ET.fromstring(sld)  # noqa: S314
    literals = [e.text for e in sld_root.iter("{http://www.opengis.net/ogc}Literal")]
    assert sorted(literals) == sorted(STATUSES)
    with closing(sqlite3.connect(files[which])) as con:
        assert con.execute("SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'").fetchone() == (
            "attributes",)
    # GDAL reads it as a plain table (QGIS hides it from the layer list)
    assert pyogrio.read_info(files[which], layer=LAYER_STYLES)["features"] == 1


def test_an_older_store_gets_the_style_and_version_when_opened(files: dict[str, Path]) -> None:
    with closing(sqlite3.connect(files["store"])) as con:
        con.execute(f"DROP TABLE {LAYER_STYLES}")
        con.execute(f"DELETE FROM gpkg_contents WHERE table_name = '{LAYER_STYLES}'")
        con.execute("PRAGMA user_version = 10300")
        con.commit()
    CandidateStore(files["store"])
    assert [r[4] for r in _styles(files["store"])] == [STATUS_STYLE]
    assert gpkg_problems(files["store"]) == []


def test_the_qml_and_sld_are_well_formed_for_points_and_polygons() -> None:
    for polygon in (False, True):
        attr, cats, kind = _categories(status_qml(polygon))
        assert attr == "status" and list(cats) == list(STATUSES) and kind == ("fill" if polygon else "marker")
        ET.fromstring(status_sld("sites", polygon))  # noqa: S314
