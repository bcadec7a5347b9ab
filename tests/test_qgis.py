"""sitewatch's outputs in QGIS itself (PyQGIS) and in GDAL's ``ogrinfo``, where they are installed.

PyQGIS lives in the system Python (Debian: ``apt-get install python3-qgis qgis-providers``), not
in the project's environment, so :file:`qgis_check.py` runs there in a subprocess, offscreen,
and prints what QGIS sees. Skipped where QGIS (or ``ogrinfo``) is absent, as in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sitewatch.imagery.candidates.export import export_sites
from sitewatch.imagery.candidates.store import GEOMETRY_LAYERS, STATUSES, CandidateStore
from sitewatch.imagery.detect.pipeline import DetectSettings, detect
from sitewatch.imagery.models.registry import shipped_models
from sitewatch.imagery.synthetic.sentinel2 import make_scene

HERE = Path(__file__).resolve().parent
#: The Python with PyQGIS: $SITEWATCH_QGIS_PYTHON, else the system's.
QGIS_PYTHON = os.environ.get("SITEWATCH_QGIS_PYTHON", "/usr/bin/python3")
#: GDAL older than 3.7 (Debian 12's, which its QGIS uses) says this of every GeoPackage 1.4 file,
#: GDAL's own default since 3.7; it reads them all the same.
OLD_GDAL_ON_1_4 = re.compile(r"user_version=0x000028A0 \(10400, v1\.4\.0\) on '.*' may only be partially supported")


def _qgis_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    return env


def _has_qgis() -> str | None:
    """Why PyQGIS cannot be used here, or ``None`` when it can."""
    if not Path(QGIS_PYTHON).is_file():
        return f"no {QGIS_PYTHON} (set SITEWATCH_QGIS_PYTHON to a Python with PyQGIS)"
    try:
        proc = subprocess.run([QGIS_PYTHON, "-c", "from qgis.core import QgsApplication"], env=_qgis_env(),
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{QGIS_PYTHON} cannot import qgis.core ({exc})"
    if proc.returncode != 0:
        return f"QGIS is not installed for {QGIS_PYTHON} (apt-get install python3-qgis qgis-providers)"
    return None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the demo model, two reviews, its density as GeoTIFF and GeoPackage, its sites exported."""
    if "demo" not in shipped_models():
        pytest.skip("demo model not built")
    base = tmp_path_factory.mktemp("qgis")
    make_scene(base / "scene.tif", seed=5, width=384, height=384, n_vessels=12, n_kilns=10)
    detect([base / "scene.tif"], "demo", base / "run", DetectSettings(tile_size=128, overlap=32, workers=2))
    store = CandidateStore.in_run_dir(base / "run")
    sites = store.sites()
    store.review(sites[0].site_id, "confirmed", "ana")
    store.review(sites[1].site_id, "rejected", "ana")
    for out in ("density.tif", "density.gpkg"):
        proc = subprocess.run([sys.executable, "-m", "sitewatch.cli", "density", str(base / "run"), "--cell", "500m",
                               "--out", str(base / out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    export_sites(store, base / "sites.gpkg")
    return base


def test_qgis_opens_the_density_raster_and_cells_and_the_store_with_spatial_indexes_and_the_style(
        run_dir: Path) -> None:
    why = _has_qgis()
    if why:
        pytest.skip(why)
    store = run_dir / "run" / "candidates.gpkg"
    proc = subprocess.run(
        [QGIS_PYTHON, str(HERE / "qgis_check.py"), "--raster", str(run_dir / "density.tif"),
         "--vector", str(run_dir / "density.gpkg"), "--vector", str(store), "--vector", str(run_dir / "sites.gpkg")],
        env=_qgis_env(), capture_output=True, text=True, timeout=300, cwd=run_dir)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    # no GDAL or QGIS warning while opening, but old GDAL's note on GeoPackage 1.4
    noise = [line for line in proc.stderr.splitlines() if line.strip() and not OLD_GDAL_ON_1_4.search(line)]
    assert not [line for line in noise if re.search(r"warning|error", line, re.I)], proc.stderr
    (raster,) = seen["rasters"]
    assert raster["valid"] and raster["bands"] >= 3 and raster["crs"].startswith("EPSG:326")
    # the .qml beside it: the count in the web maps' classes, not count/z/hotspot as red/green/blue
    assert (raster["renderer"], raster["renderer_bands"]) == ("singlebandpseudocolor", [1])
    layers = {(Path(v["path"]).name, v["layer"]): v for v in seen["vectors"]}
    cells = layers[("density.gpkg", "density")]
    assert cells["valid"] and cells["features"] > 0 and cells["crs"] == "EPSG:4326" and cells["spatial_index"]
    n_sites = len(CandidateStore(store).sites())
    for layer in GEOMETRY_LAYERS:
        v = layers[("candidates.gpkg", layer)]
        assert v["valid"] and v["features"] > 0 and v["crs"] == "EPSG:4326", v
        assert v["spatial_index"], f"QGIS sees no spatial index on {layer}"
    assert ("candidates.gpkg", LAYER := "layer_styles") not in layers, f"QGIS lists {LAYER} as a layer"
    for name in ("candidates.gpkg", "sites.gpkg"):
        sites = layers[(name, "sites")]
        assert sites["features"] == n_sites and sites["spatial_index"]
        assert sites["default_style_loaded"], f"{name}: QGIS loaded no default style for sites"
        assert sites["renderer"] == "categorizedSymbol" and sites["render_attribute"] == "status"
        assert sites["categories"] == list(STATUSES)
    assert layers[("candidates.gpkg", "detections")]["renderer"] == "singleSymbol"  # only sites is styled


def test_ogrinfo_reports_a_spatial_index_on_each_geometry_layer(run_dir: Path) -> None:
    ogrinfo = shutil.which("ogrinfo")
    if ogrinfo is None:
        pytest.skip("ogrinfo (GDAL's command line tools, apt-get install gdal-bin) is not installed")
    store = run_dir / "run" / "candidates.gpkg"
    for layer in GEOMETRY_LAYERS:
        proc = subprocess.run([ogrinfo, "-ro", str(store), "-sql", f"SELECT HasSpatialIndex('{layer}', 'geom')"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"HasSpatialIndex[^=\n]*= 1\b", proc.stdout), (layer, proc.stdout)


SEN2SHIPS = HERE.parents[1] / "shared" / "data" / "sen2ships"


def test_qgis_opens_the_density_of_a_run_over_real_ports(tmp_path: Path) -> None:
    """Three real ports of ../shared, 900 km and more apart, so three regions: each region's density
    GeoTIFF and the GeoPackage of every region's cells open valid in QGIS, with a spatial index."""
    why = _has_qgis() or (None if SEN2SHIPS.is_dir() else "../shared/data/sen2ships is not present")
    if why:
        pytest.skip(why)
    if "vessels-s2" not in shipped_models():
        pytest.skip("vessels-s2 not shipped")
    base = tmp_path
    detect([SEN2SHIPS / p for p in ("casablanca", "algiers", "busan")], "vessels-s2", base / "run",
           DetectSettings(workers=2), overwrite=True)
    for out in ("d.tif", "d.gpkg"):
        proc = subprocess.run([sys.executable, "-m", "sitewatch.cli", "density", str(base / "run"), "--cell", "1km",
                               "--out", str(base / out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    rasters = sorted(base.glob("d-r*.tif"))
    assert len(rasters) == 3, rasters
    args = [a for r in rasters for a in ("--raster", str(r))]
    proc = subprocess.run([QGIS_PYTHON, str(HERE / "qgis_check.py"), *args, "--vector", str(base / "d.gpkg"),
                           "--vector", str(base / "run" / "candidates.gpkg")],
                          env=_qgis_env(), capture_output=True, text=True, timeout=300, cwd=base)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    noise = [line for line in proc.stderr.splitlines() if line.strip() and not OLD_GDAL_ON_1_4.search(line)]
    assert not [line for line in noise if re.search(r"warning|error", line, re.I)], proc.stderr
    assert len(seen["rasters"]) == 3
    assert {r["crs"] for r in seen["rasters"]} == {"EPSG:32629", "EPSG:32631", "EPSG:32652"}  # each in its UTM zone
    assert all(r["valid"] and r["bands"] >= 3 and r["renderer"] == "singlebandpseudocolor" for r in seen["rasters"])
    layers = {(Path(v["path"]).name, v["layer"]): v for v in seen["vectors"]}
    cells = layers[("d.gpkg", "density")]
    assert cells["valid"] and cells["features"] > 0 and cells["spatial_index"]
    for layer in GEOMETRY_LAYERS:
        assert layers[("candidates.gpkg", layer)]["spatial_index"], layer
    print(json.dumps({"rasters": [(Path(r["path"]).name, r["crs"], r["width"], r["height"]) for r in seen["rasters"]],
                      "cells": cells["features"], "sites": layers[("candidates.gpkg", "sites")]["features"]}))
