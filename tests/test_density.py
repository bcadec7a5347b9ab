"""``sitewatch density``: counts per grid cell, Gi* hotspots, and the files QGIS and xarray open."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.warp
import xarray as xr

from sitewatch.imagery.candidates.density import density, getis_ord_star, grid_crs, parse_cell, write_density
from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.errors import OutputError, UsageError

LON0, LAT0 = 90.40, 24.70  # Mymensingh, UTM 46N
M_LON = 1 / (111_320 * np.cos(np.radians(LAT0)))  # degrees per metre east
M_LAT = 1 / 110_750


@pytest.fixture
def store(tmp_path, add_scene) -> CandidateStore:  # type: ignore[no-untyped-def]
    """A cluster of 12 kilns within 1 km, 6 kilns scattered over 20 km, and 3 vessels on two dates."""
    s = CandidateStore.create(tmp_path / "candidates.gpkg")
    # 200 m apart (two sites' distance for kilns is 100 m), all in the cell 10-11 km east and north
    cluster = [("kiln", LON0 + (10_150 + 220 * i) * M_LON, LAT0 + (10_200 + 250 * j) * M_LAT, 0.8)
               for i in range(4) for j in range(3)]
    scattered = [("kiln", LON0 + x * M_LON, LAT0 + y * M_LAT, 0.6)
                 for x, y in ((500, 500), (19_500, 500), (500, 19_500), (19_500, 19_500), (4_500, 15_500), (15_500, 4_500))]
    add_scene(s, "s1", cluster + scattered, acquired="2024-01-05")
    add_scene(s, "s2", [("vessel", LON0 + 2_000 * M_LON, LAT0 + 2_000 * M_LAT, 0.9)], acquired="2024-01-05")
    add_scene(s, "s3", [("vessel", LON0 + 2_000 * M_LON, LAT0 + 2_000 * M_LAT, 0.9),
                        ("vessel", LON0 + 9_000 * M_LON, LAT0 + 2_000 * M_LAT, 0.9)], acquired="2024-02-05")
    return s


def test_counts_and_hotspots(store: CandidateStore) -> None:
    ds = density(store, 1000.0)
    assert ds.attrs["crs"] == "EPSG:32646" and ds.attrs["sites"] == 21
    assert list(ds.layer.values) == ["kiln", "vessel 2024-01-05", "vessel 2024-02-05"]
    kiln = ds["count"].sel(layer="kiln").values
    assert kiln.sum() == 18 and kiln.max() == 12  # the cluster is in one cell
    r, c = np.unravel_index(np.argmax(kiln), kiln.shape)
    hot = ds["hotspot"].sel(layer="kiln").values
    assert hot[r, c] == 1 and ds["gi_z"].sel(layer="kiln").values[r, c] > 1.96
    assert (hot == 1).sum() <= 9  # only the cluster and its neighbours
    assert ds["gi_p"].sel(layer="kiln").values[r, c] < 0.05
    assert ds["count"].sel(layer="vessel 2024-02-05").values.sum() == 2
    # cells are 1 km on the ground, with an origin on the km grid
    assert float(ds.x[1] - ds.x[0]) == 1000.0 and float(ds.x[0] - 500) % 1000 == 0
    assert density(store, 1000.0, by_date=False).sizes["layer"] == 2


def test_status_filter_and_errors(store: CandidateStore) -> None:
    store.review("kiln-000001", "confirmed", "ana")
    ds = density(store, 2000.0, statuses=["confirmed"])
    assert int(ds["count"].sum()) == 1 and ds.attrs["statuses"] == "confirmed"
    with pytest.raises(UsageError, match="no sites with status rejected"):
        density(store, 1000.0, statuses=["rejected"])
    with pytest.raises(UsageError, match="larger --cell"):
        density(store, 1.0)
    with pytest.raises(UsageError, match="projected CRS"):
        density(store, 1000.0, crs="EPSG:4326")
    for bad in ("abc", "-1km", "0"):
        with pytest.raises(UsageError, match="--cell"):
            parse_cell(bad)
    assert parse_cell("1km") == 1000 and parse_cell("500m") == 500 and parse_cell("750") == 750


def test_gi_star_of_a_flat_grid_and_a_wide_area() -> None:
    z, p = getis_ord_star(np.zeros((4, 4)))
    assert (z == 0).all() and (p == 1).all()
    assert grid_crs(np.array([10.0, 30.0]), np.array([0.0, 1.0])) == "EPSG:6933"
    assert grid_crs(np.array([-70.0]), np.array([-33.0])) == "EPSG:32719"


def test_files_open_in_rasterio_xarray_and_gdal(store: CandidateStore, tmp_path: Path) -> None:
    ds = density(store, 1000.0)
    tif = write_density(ds, tmp_path / "d.tif")
    with rasterio.open(tif) as src:
        assert src.crs.to_epsg() == 32646 and src.res == (1000.0, 1000.0) and src.count == 9
        assert src.descriptions[0] == "count kiln"
        band = src.read(1)
        assert band.sum() == 18
        # the cluster's cell, found through the GeoTIFF's own georeferencing
        x, y = rasterio.warp.transform("EPSG:4326", src.crs, [LON0 + 10_650 * M_LON], [LAT0 + 10_650 * M_LAT])
        r, c = src.index(x[0], y[0])
        assert band[r, c] == 12 and src.read(3)[r, c] == 1
    nc = write_density(ds, tmp_path / "d.nc")
    back = xr.open_dataset(nc)
    assert int(back["count"].sum()) == 21 and "crs_wkt" in back["spatial_ref"].attrs
    gj = write_density(ds, tmp_path / "d.geojson")
    feats = json.loads(gj.read_text())["features"]
    assert sum(f["properties"]["count"] for f in feats) == 21
    assert any(f["properties"]["hotspot"] == "hot" and f["properties"]["count"] == 12 for f in feats)
    gpkg = write_density(ds, tmp_path / "d.gpkg")
    info = pyogrio.read_info(gpkg, layer="density")
    assert info["crs"] == "EPSG:4326" and info["features"] == len(feats) and info["geometry_type"] == "Polygon"
    with pytest.raises(OutputError, match="already exists"):
        write_density(ds, tmp_path / "d.tif")
    with pytest.raises(UsageError, match=".tif, .nc"):
        write_density(ds, tmp_path / "d.png")


def test_cli_writes_one_line_and_fails_in_one_line(store: CandidateStore, tmp_path: Path) -> None:
    import subprocess
    import sys

    run = store.path.parent
    ok = subprocess.run([sys.executable, "-m", "sitewatch.cli", "density", str(run), "--cell", "1km", "--out",
                         str(tmp_path / "d.gpkg")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "21 sites on" in ok.stdout and "hot" in ok.stdout and (tmp_path / "d.gpkg").is_file()
    for args, code in ((["--cell", "big"], 2), (["--out", str(tmp_path / "d.gpkg")], 5), (["--status", "rejected"], 2)):
        full = ["density", str(run), "--out", str(tmp_path / "e.tif"), *args]
        r = subprocess.run([sys.executable, "-m", "sitewatch.cli", *full], capture_output=True, text=True, timeout=120)
        assert r.returncode == code and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "e.tif").exists()


def test_density_geojson_for_the_web_maps(store: CandidateStore) -> None:
    from sitewatch.imagery.candidates.density import density_for_map, density_geojson

    fc = density_geojson(store, 1000.0)
    assert fc["type"] == "FeatureCollection" and fc["grid_crs"] == "EPSG:32646" and fc["cell_m"] == 1000.0
    assert fc["sites"] == 21 and fc["status"] == "all"
    counts = [f["properties"]["count"] for f in fc["features"]]
    assert sum(counts) == 21 and max(counts) == fc["max_count"] == 12  # every class in one grid: the kiln cluster
    top = next(f for f in fc["features"] if f["properties"]["count"] == 12)
    assert top["properties"]["hotspot"] == "hot" and top["properties"]["gi_z"] > 1.96 and top["properties"]["gi_p"] < 0.05
    assert {f["properties"]["hotspot"] for f in fc["features"]} <= {"hot", "cold", None}
    from shapely.geometry import Point, shape

    cell = shape(top["geometry"])  # lon/lat, about 1 km square, around the cluster
    assert cell.contains(Point(LON0 + 10_500 * M_LON, LAT0 + 10_450 * M_LAT))
    assert 0.9 < (cell.bounds[2] - cell.bounds[0]) / (1000 * M_LON) < 1.1
    assert 0.9 < (cell.bounds[3] - cell.bounds[1]) / (1000 * M_LAT) < 1.1
    # by status; none of a status: no cells, no error (the map shows an empty layer)
    store.review("kiln-000001", "confirmed", "ana")
    assert density_geojson(store, 2000.0, "confirmed")["sites"] == 1
    assert density_for_map(store, "2km", "confirmed,unsure")["sites"] == 1
    empty = density_geojson(store, 1000.0, ["rejected"])
    assert empty["features"] == [] and empty["grid_crs"] is None
    with pytest.raises(UsageError, match="status"):
        density_geojson(store, 1000.0, "maybe")
    with pytest.raises(UsageError, match="larger --cell"):
        density_geojson(store, 10.0, max_cells=1000)
    for bad in ("abc", "5", "2000km"):
        with pytest.raises(UsageError, match="cell"):
            density_for_map(store, bad)
