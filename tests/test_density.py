"""``sitewatch density``: counts per grid cell, Gi* hotspots, and the files QGIS and xarray open."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET  # noqa: S405 - parses our own output
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.warp
import xarray as xr

from sitewatch.imagery.candidates.density import (
    count_classes,
    density,
    getis_ord_star,
    grid_crs,
    parse_cell,
    write_density,
)
from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.errors import OutputError, UsageError

LON0, LAT0 = 90.40, 24.70  # Mymensingh, UTM 46N
M_LON = 1 / (111_320 * np.cos(np.radians(LAT0)))  # degrees per metre east
M_LAT = 1 / 110_750


@pytest.fixture
def store(tmp_path, add_scene) -> CandidateStore:  # type: ignore[no-untyped-def]
    """A cluster of 12 kilns within 1 km, 6 kilns scattered over 20 km, and 3 vessels on two dates."""
    s = CandidateStore.create(tmp_path / "candidates.gpkg")
    # 200 m apart (two sites' distance for kilns is 60 m), all in the cell 10-11 km east and north
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
    # QGIS's default style beside it: the count's classes and colours as on the web maps, 0 transparent
    style = ET.parse(tif.with_suffix(".qml")).getroot()
    renderer = style.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "singlebandpseudocolor" and renderer.get("band") == "1"
    items = [(i.get("label"), i.get("alpha"), float(i.get("value", "nan"))) for i in style.iter("item")]
    assert items == [("0", "0", 0.5), ("1-2", "255", 2.5), ("3", "255", 3.5), ("4", "255", 4.5), ("5-7", "255", 7.5),
                     ("8-12", "255", 12.5)]
    assert count_classes(9) == [(1, 2), (3, 4), (5, 6), (7, 9)]  # the review page's legend for 9 (docs/review-density.png)
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


# --- sites in several distant regions ------------------------------------------------------------

LON1 = 70.40  # 20 degrees west of Mymensingh at the same latitude (about 2,000 km): UTM 42N
M_LON1 = M_LON


@pytest.fixture
def two_regions(tmp_path, add_scene) -> CandidateStore:  # type: ignore[no-untyped-def]
    """The ``store`` layout (12 kilns in one cell, 6 scattered over 20 km, 3 vessels) near
    Mymensingh, and 5 kilns and 2 vessels some 2,000 km to the west."""
    run = tmp_path / "two"
    run.mkdir()
    s = CandidateStore.create(run / "candidates.gpkg")
    cluster = [("kiln", LON0 + (10_150 + 220 * i) * M_LON, LAT0 + (10_200 + 250 * j) * M_LAT, 0.8)
               for i in range(4) for j in range(3)]
    scattered = [("kiln", LON0 + x * M_LON, LAT0 + y * M_LAT, 0.6)
                 for x, y in ((500, 500), (19_500, 500), (500, 19_500), (19_500, 19_500), (4_500, 15_500), (15_500, 4_500))]
    add_scene(s, "east", cluster + scattered, acquired="2024-01-05")
    add_scene(s, "east-v", [("vessel", LON0 + 2_000 * M_LON, LAT0 + 2_000 * M_LAT, 0.9),
                            ("vessel", LON0 + 9_000 * M_LON, LAT0 + 2_000 * M_LAT, 0.9)], acquired="2024-02-05")
    west = [("kiln", LON1 + x * M_LON1, LAT0 + y * M_LAT, 0.7) for x, y in ((300, 300), (3_300, 300), (300, 6_300),
                                                                             (8_300, 8_300), (5_300, 2_300))]
    add_scene(s, "west", west, acquired="2024-01-05")
    add_scene(s, "west-v", [("vessel", LON1 + 1_300 * M_LON1, LAT0 + 4_300 * M_LAT, 0.9),
                            ("vessel", LON1 + 7_300 * M_LON1, LAT0 + 1_300 * M_LAT, 0.9)], acquired="2024-03-01")
    return s


def test_split_regions_is_single_linkage_west_to_east_and_order_free() -> None:
    from sitewatch.imagery.candidates.density import region_gap, split_regions

    km_lon = 1 / (111.195 * np.cos(np.radians(LAT0)))  # degrees of longitude per km at LAT0
    # a chain of sites 40 km apart is one region; a gap of 60 km starts another
    lons = LON0 + np.array([0, 40, 80, 140, 180, -900]) * km_lon
    lats = np.full(6, LAT0)
    labels = split_regions(lons, lats, 50_000)
    assert list(labels) == [1, 1, 1, 2, 2, 0]  # numbered west to east
    rng = np.random.default_rng(0)
    for _ in range(5):  # the numbering depends on the points, not their order
        perm = rng.permutation(6)
        assert list(split_regions(lons[perm], lats[perm], 50_000)) == list(labels[perm])
    assert list(split_regions(lons, lats, 70_000)) == [1, 1, 1, 1, 1, 0]
    # just within the gap: joined; just past it: apart (great-circle distance, 111.195 km a degree)
    assert len(set(split_regions(np.array([0.0, 0.0]), np.array([0.0, 49.8 / 111.195]), 50_000))) == 1
    assert len(set(split_regions(np.array([0.0, 0.0]), np.array([0.0, 50.2 / 111.195]), 50_000))) == 2
    # across the antimeridian: one region, in UTM zone 60 or 1, not the global grid
    assert list(split_regions(np.array([179.9, -179.9]), np.array([-17.0, -17.0]), 50_000)) == [0, 0]
    assert grid_crs(np.array([179.9, -179.9]), np.array([-17.0, -17.0])) in ("EPSG:32760", "EPSG:32701")
    assert split_regions(np.zeros(0), np.zeros(0), 50_000).size == 0
    # the same partition as scipy's single linkage of all pairwise distances (chords of the gap)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    radius = 6_371_008.8
    for _ in range(10):
        lo, la = rng.uniform(0, 8, 60), rng.uniform(40, 46, 60)
        lam, phi = np.radians(lo), np.radians(la)
        xyz = radius * np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
        ref = fcluster(linkage(pdist(xyz), "single"), 2 * radius * np.sin(50_000 / (2 * radius)), "distance")
        got = split_regions(lo, la, 50_000)
        assert ((ref[:, None] == ref[None, :]) == (got[:, None] == got[None, :])).all()
    assert region_gap(1000) == 50_000 and region_gap(5000) == 100_000


def test_two_regions_get_two_grids_in_their_own_utm_zones(two_regions: CandidateStore) -> None:
    from sitewatch.imagery.candidates.density import density_regions, site_regions

    grids = density_regions(two_regions, 1000.0)
    assert list(grids) == ["r1", "r2"]  # west to east
    west, east = grids["r1"], grids["r2"]
    assert west.attrs["crs"] == "EPSG:32642" and east.attrs["crs"] == "EPSG:32646"
    assert west.attrs["sites"] == 7 and east.attrs["sites"] == 20
    assert int(west["count"].sum()) + int(east["count"].sum()) == len(two_regions.sites()) == 27
    assert west.attrs["region"] == "r1" and west.attrs["regions"] == east.attrs["regions"] == 2
    # each grid covers its own sites only: about 20 x 20 and 9 x 9 cells, not 2,000 km of empty land
    assert east.sizes["x"] <= 21 and east.sizes["y"] <= 21 and west.sizes["x"] <= 10 and west.sizes["y"] <= 10
    assert list(west.layer.values) == ["kiln", "vessel 2024-03-01"]  # the layers with a site in the region
    assert list(east.layer.values) == ["kiln", "vessel 2024-02-05"]
    # the cluster of 12 kilns is still a hot cell, within its region
    kiln = east["count"].sel(layer="kiln").values
    r, c = np.unravel_index(np.argmax(kiln), kiln.shape)
    assert kiln[r, c] == 12 and east["hotspot"].sel(layer="kiln").values[r, c] == 1
    assert east["gi_z"].sel(layer="kiln").values[r, c] > 1.96
    assert (east["hotspot"].sel(layer="kiln").values == 1).sum() <= 9
    # the same as a one-region store's grid of those sites: the region's Gi* ignores the other region
    assert float(east.x[1] - east.x[0]) == 1000.0 and float(east.x[0] - 500) % 1000 == 0
    # one region by name, through density() too; several without a name: a clear error
    assert density(two_regions, 1000.0, region="r2").equals(east)
    assert list(density_regions(two_regions, 1000.0, region="r1")) == ["r1"]
    with pytest.raises(UsageError, match=r"2 regions .*density_regions\(\).*region='r1'"):
        density(two_regions, 1000.0)
    with pytest.raises(UsageError, match="--region 'r3': no such region.*r1 .*r2 "):
        density_regions(two_regions, 1000.0, region="r3")
    # the cap counts the cells of every region together
    with pytest.raises(UsageError, match="2 regions' grids have .* cells in all .*larger --cell"):
        density_regions(two_regions, 1000.0, max_cells=450)
    regions = site_regions(two_regions, 1000.0)
    assert [(r.name, r.crs, r.sites) for r in regions] == [("r1", "EPSG:32642", 7), ("r2", "EPSG:32646", 20)]
    assert regions[0].bounds[0] < LON1 < regions[0].bounds[2] and regions[1].bounds[1] < LAT0 < regions[1].bounds[3]
    # coarse cells join the regions again (gap: 20 cells): 150 km cells, 2,000 km apart, one grid over 20 degrees
    joined = density_regions(two_regions, 150_000.0)
    assert list(joined) == ["r1"] and joined["r1"].attrs["crs"] == "EPSG:6933"


def test_one_region_is_as_before(store: CandidateStore) -> None:
    from sitewatch.imagery.candidates.density import density_regions

    (only,) = density_regions(store, 1000.0).values()
    assert only.equals(density(store, 1000.0)) and only.attrs["region"] == "r1" and only.attrs["regions"] == 1


def test_files_per_region(two_regions: CandidateStore, tmp_path: Path) -> None:
    from sitewatch.imagery.candidates.density import density_regions, region_paths, write_density_regions

    grids = density_regions(two_regions, 1000.0)
    out = tmp_path / "out"
    out.mkdir()
    tifs = write_density_regions(grids, out / "d.tif")
    assert tifs == [out / "d-r1.tif", out / "d-r2.tif"]
    total = 0
    for tif, epsg in zip(tifs, (32642, 32646), strict=True):
        with rasterio.open(tif) as src:
            assert src.crs.to_epsg() == epsg and src.res == (1000.0, 1000.0) and src.count == 6
            assert src.descriptions[0] == "count kiln" and src.tags()["region"] == tif.stem[-2:]
            total += int(src.read(1).sum()) + int(src.read(4).sum())
    assert total == 27
    with rasterio.open(tifs[1]) as src:  # the kiln cluster, found through the file's georeferencing
        x, y = rasterio.warp.transform("EPSG:4326", src.crs, [LON0 + 10_650 * M_LON], [LAT0 + 10_650 * M_LAT])
        r, c = src.index(x[0], y[0])
        assert src.read(1)[r, c] == 12 and src.read(3)[r, c] == 1
    ncs = write_density_regions(grids, out / "d.nc")
    assert [p.name for p in ncs] == ["d-r1.nc", "d-r2.nc"]
    assert xr.open_dataset(ncs[0]).attrs["region"] == "r1"
    assert [p.name for p in write_density_regions(grids, out / "d.gpkg")] == ["d.gpkg"]
    info = pyogrio.read_info(out / "d.gpkg", layer="density")
    assert info["crs"] == "EPSG:4326" and "region" in list(info["fields"]) and "grid_crs" in list(info["fields"])
    _, _, _, field_data = pyogrio.raw.read(out / "d.gpkg", layer="density", columns=["region", "count", "grid_crs"])
    regions, counts, crss = field_data
    assert set(regions) == {"r1", "r2"} and int(counts.sum()) == 27
    assert {(r, c) for r, c in zip(regions, crss, strict=True)} == {("r1", "EPSG:32642"), ("r2", "EPSG:32646")}
    write_density_regions(grids, out / "d.geojson")
    feats = json.loads((out / "d.geojson").read_text())["features"]
    assert {f["properties"]["region"] for f in feats} == {"r1", "r2"} and sum(f["properties"]["count"] for f in feats) == 27
    # one region by name: the file asked for
    assert write_density_regions({"r2": grids["r2"]}, out / "one.tif") == [out / "one.tif"]
    assert region_paths("x/d.tif", ["r1"]) == {"r1": Path("x/d.tif")}
    # an existing file of any region is refused before any file is written
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "d-r2.tif").write_bytes(b"keep")
    with pytest.raises(OutputError, match="d-r2.tif: already exists"):
        write_density_regions(grids, fresh / "d.tif")
    assert sorted(p.name for p in fresh.iterdir()) == ["d-r2.tif"] and (fresh / "d-r2.tif").read_bytes() == b"keep"
    # --overwrite replaces them all
    assert len(write_density_regions(grids, fresh / "d.tif", overwrite=True)) == 2


def test_a_failed_write_leaves_no_file(two_regions: CandidateStore, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sitewatch.imagery.candidates.density as mod

    grids = mod.density_regions(two_regions, 1000.0)
    real = mod._write_gtiff
    calls = []

    def second_fails(ds, path):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(b"half")
            raise OSError(28, "No space left on device")
        real(ds, path)

    monkeypatch.setattr(mod, "_write_gtiff", second_fails)
    with pytest.raises(OutputError, match="cannot write .*No space left"):
        mod.write_density_regions(grids, tmp_path / "d.tif")
    assert len(calls) == 2 and not [p for p in tmp_path.rglob("*.tif")] and not [p for p in tmp_path.rglob("*.tmp*")]


def test_cli_writes_a_file_per_region_and_names_them(two_regions: CandidateStore, tmp_path: Path) -> None:
    import subprocess
    import sys

    run = two_regions.path.parent

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sitewatch.cli", "density", str(run), "--cell", "1km", *args],
                              capture_output=True, text=True, timeout=120)

    ok = cli("--out", str(tmp_path / "d.tif"))
    assert ok.returncode == 0, ok.stderr
    assert "27 sites in 2 regions" in ok.stdout and f"r1 -> {tmp_path / 'd-r1.tif'}" in ok.stdout
    assert f"r2 -> {tmp_path / 'd-r2.tif'}" in ok.stdout and "EPSG:32642" in ok.stdout and "EPSG:32646" in ok.stdout
    assert sorted(p.name for p in tmp_path.glob("d*")) == ["d-r1.qml", "d-r1.tif", "d-r2.qml", "d-r2.tif"]
    one = cli("--out", str(tmp_path / "e.tif"), "--region", "r2")
    assert one.returncode == 0 and "(region r2 of 2): 20 sites" in one.stdout and (tmp_path / "e.tif").is_file()
    assert cli("--out", str(tmp_path / "d.gpkg")).returncode == 0 and (tmp_path / "d.gpkg").is_file()
    for args, code in ((["--out", str(tmp_path / "d.tif")], 5), (["--out", str(tmp_path / "f.tif"), "--region", "r7"], 2)):
        r = cli(*args)
        assert r.returncode == code and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "f.tif").exists()


def test_the_web_maps_show_every_region_at_the_cell_asked(two_regions: CandidateStore) -> None:
    from sitewatch.imagery.candidates.density import density_for_map, density_geojson
    from sitewatch.imagery.detect.report import map_density

    fc = density_geojson(two_regions, 1000.0)
    assert fc["cell_m"] == 1000.0 and fc["grid_crs"] is None and fc["sites"] == 27
    assert [(r["name"], r["grid_crs"], r["sites"]) for r in fc["regions"]] == [("r1", "EPSG:32642", 7),
                                                                               ("r2", "EPSG:32646", 20)]
    by_region = {name: [f for f in fc["features"] if f["properties"]["region"] == name] for name in ("r1", "r2")}
    assert sum(f["properties"]["count"] for f in by_region["r1"]) == 7
    assert sum(f["properties"]["count"] for f in by_region["r2"]) == 20
    assert fc["max_count"] == 12
    from shapely.geometry import shape

    for f in fc["features"]:  # 1 km cells in both regions
        b = shape(f["geometry"]).bounds
        assert 0.9 < (b[2] - b[0]) / (1000 * M_LON) < 1.1 and 0.9 < (b[3] - b[1]) / (1000 * M_LAT) < 1.1
    # the cap counts the cells of both regions
    cells = sum(r["cells"] for r in fc["regions"])
    density_geojson(two_regions, 1000.0, max_cells=cells)
    with pytest.raises(UsageError, match="larger --cell"):
        density_geojson(two_regions, 1000.0, max_cells=cells - 1)
    assert density_for_map(two_regions, "1km")["regions"] == fc["regions"]
    # map.html's layer: 1 km cells at both places
    layer = map_density(two_regions)
    assert layer is not None and layer["cell_m"] == 1000.0 and len(layer["regions"]) == 2
    # one region: the CRS at the top, as before
    one = density_geojson(two_regions, 150_000.0)
    assert len(one["regions"]) == 1 and one["grid_crs"] == one["regions"][0]["grid_crs"]
