"""xarray in: ``detect()`` on a ``DataArray`` scene, and ``sitewatch.open_scene``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

import sitewatch
from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.detect.pipeline import DetectSettings, detect, plan
from sitewatch.imagery.errors import BandError, NotGeoreferencedError, SitewatchError, UsageError
from sitewatch.imagery.models.registry import shipped_models
from sitewatch.imagery.scenes.arrays import scene_from_dataarray
from sitewatch.imagery.scenes.scene import SceneReader
from sitewatch.imagery.scenes.tiling import TileGrid
from sitewatch.imagery.synthetic.sentinel2 import make_scene

rioxarray = pytest.importorskip("rioxarray")
demo = pytest.mark.skipif("demo" not in shipped_models(), reason="demo model not built")

BANDS = ("B02", "B03", "B04", "B08")
#: Small tiles: many seams, so the equality below covers the core/overlap bookkeeping too.
SETTINGS = DetectSettings(tile_size=128, overlap=32, workers=2)


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("xr") / "coast.tif"
    make_scene(path, seed=3, width=512, height=448, n_vessels=30, n_kilns=20)
    return path


def _same_detections(a: sitewatch.RunSummary, b: sitewatch.RunSummary) -> None:
    da_, db_ = a.results[0].detections, b.results[0].detections
    assert len(da_["scores"]) == len(db_["scores"]) > 20
    np.testing.assert_allclose(db_["boxes"], da_["boxes"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(db_["scores"], da_["scores"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(db_["labels"], da_["labels"])
    np.testing.assert_allclose(db_["centre_lonlat"], da_["centre_lonlat"], rtol=0, atol=1e-9)
    sites_a = CandidateStore.in_run_dir(a.out).sites()
    sites_b = CandidateStore.in_run_dir(b.out).sites()
    assert len(sites_a) == len(sites_b) > 0


@demo
def test_a_rioxarray_dataarray_gives_the_same_detections_as_its_file(scene_file: Path, tmp_path: Path) -> None:
    from_file = detect([scene_file], "demo", tmp_path / "file", SETTINGS)
    # Chunks that do not line up with the 128/96-pixel tile grid nor the file's blocks.
    da = rioxarray.open_rasterio(scene_file, chunks={"band": -1, "y": 200, "x": 150})
    da = da.assign_coords(band=list(da.attrs["long_name"])).rename("coast")
    assert da.chunks is not None  # Dask-backed
    from_array = detect(da, "demo", tmp_path / "array", SETTINGS)
    _same_detections(from_file, from_array)
    res = from_array.results[0]
    assert res.scene.name == "coast" and res.scene.source == "xarray:coast" and res.scene.files == ()
    assert res.tiles_total == len(TileGrid(512, 448, 128, 32)) and res.tiles_failed == 0
    assert (tmp_path / "array" / "quicklooks").is_dir() and any((tmp_path / "array" / "quicklooks").iterdir())
    assert (tmp_path / "array" / "map.html").is_file()


@demo
def test_open_scene_and_a_numpy_backed_array_also_match(scene_file: Path, tmp_path: Path) -> None:
    da = sitewatch.open_scene(scene_file, chunks=256)
    assert da.name == "coast" and list(da.coords["band"].values) == list(BANDS)
    assert da.rio.crs == rasterio.crs.CRS.from_epsg(32633) and da.chunks is not None
    from_file = detect([scene_file], "demo", tmp_path / "file", SETTINGS)
    # a NumPy-backed copy with reordered bands: the band names, not the order, decide
    in_memory = da.sel(band=["B08", "B04", "B03", "B02"]).compute()
    _same_detections(from_file, detect([in_memory], "demo", tmp_path / "mem", SETTINGS))


def test_open_scene_reads_band_directories_and_unnamed_bands(make_geotiff, tmp_path: Path) -> None:
    folder = tmp_path / "T33_bands"
    folder.mkdir()
    for k, b in enumerate(BANDS):
        src = make_geotiff(bands=1, seed=k, name=f"x_{b}.tif")
        src.rename(folder / src.name)
    da = sitewatch.open_scene(folder)
    assert da.name == "T33_bands" and list(da.coords["band"].values) == list(BANDS) and da.shape == (4, 64, 64)
    with rasterio.open(folder / "x_B04.tif") as src:
        np.testing.assert_array_equal(da.sel(band="B04").values, src.read(1))
    plain = sitewatch.open_scene(make_geotiff(bands=3, name="plain.tif"), name="other")
    assert plain.name == "other" and list(plain.coords["band"].values) == ["band_1", "band_2", "band_3"]
    with pytest.raises(SitewatchError, match="no such file"):
        sitewatch.open_scene(tmp_path / "missing.tif")
    with pytest.raises(NotGeoreferencedError, match="no CRS"):
        sitewatch.open_scene(make_geotiff(crs=None, name="nocrs.tif"))


def _array(make_geotiff) -> xr.DataArray:
    da = rioxarray.open_rasterio(make_geotiff(descriptions=BANDS, name="g.tif"), chunks={"y": 32, "x": 32})
    return da.assign_coords(band=list(BANDS)).rename("g")


def _unnamed(da: xr.DataArray) -> xr.DataArray:
    out = da.assign_coords(band=[1, 2, 3, 4])
    out.attrs = {k: v for k, v in da.attrs.items() if k != "long_name"}
    return out


def test_bad_arrays_fail_with_one_line_saying_what_to_set(make_geotiff) -> None:
    good = _array(make_geotiff)
    cases = [
        (good.rename(None), UsageError, r"da\.rename"),
        (xr.DataArray(good.values, dims=("band", "y", "x"), coords={"band": list(BANDS)}, name="n"),
         NotGeoreferencedError, r"rio\.write_crs"),
        (_unnamed(good), BandError, r"assign_coords\(band="),
        (good.assign_coords(band=["B02", "B03", "B04", "B05"]), BandError, "missing: B08"),
        (good.astype("int8"), BandError, "astype"),
        (good.expand_dims(time=2), SitewatchError, r"isel\(time=0\)"),
    ]
    for da, kind, pattern in cases:
        with pytest.raises(kind, match=pattern) as info:
            scene_from_dataarray(da, BANDS)
        assert "\n" not in str(info.value)
    no_transform = xr.DataArray(good.values, dims=("band", "y", "x"), coords={"band": list(BANDS)}, name="t")
    no_transform = no_transform.rio.write_crs("EPSG:32633")
    with pytest.raises(NotGeoreferencedError, match=r"rio\.write_transform"):
        scene_from_dataarray(no_transform, BANDS)
    # unnamed bands are fine when the bands setting names them by position
    assert scene_from_dataarray(_unnamed(good), BANDS, ["1", "2", "3", "4"]).array


def test_an_array_scene_reads_the_windows_a_file_scene_reads(make_geotiff) -> None:
    """Window by window, clipped edges, nodata and the decimated overview, read after a pickle
    round trip (what a distributed worker gets)."""
    data = (np.random.default_rng(1).random((4, 100, 90)) * 1000 + 1).astype("uint16")
    data[:, :10, :10] = 0
    path = make_geotiff(width=90, height=100, nodata=0, data=data, descriptions=BANDS, name="nd.tif")
    file_scene = sitewatch.imagery.scenes.scene.open_scene(path, BANDS)
    da = sitewatch.open_scene(path, chunks=40)
    array_scene = pickle.loads(pickle.dumps(scene_from_dataarray(da, BANDS)))
    assert array_scene.nodata == 0 and array_scene.transform == file_scene.transform
    with SceneReader(file_scene) as f, SceneReader(array_scene) as a:
        for window in ((0, 0, 30, 30), (70, 80, 20, 20), (5, 5, 64, 64)):
            for x, y in zip(f.read(*window), a.read(*window), strict=True):
                np.testing.assert_array_equal(x, y)
        fo, ao = f.overview(1024), a.overview(1024)
        np.testing.assert_array_equal(fo[0], ao[0])
        np.testing.assert_array_equal(fo[1], ao[1])
        assert a.overview(30)[0].shape == f.overview(30)[0].shape
    # a crop is georeferenced where it lies, and reads the file's pixels there
    crop = scene_from_dataarray(da.isel(x=slice(10, 50), y=slice(20, 70)), BANDS)
    assert (crop.width, crop.height) == (40, 50)
    assert crop.affine == file_scene.affine @ file_scene.affine.translation(10, 20)
    with SceneReader(file_scene) as f, SceneReader(crop) as a:
        np.testing.assert_array_equal(f.read(10, 20, 40, 50)[0], a.read(0, 0, 40, 50)[0])
    # NaN marks no data in a float array that has no nodata value
    floats = da.astype("float32").where(da != 0).rio.write_nodata(None, encoded=False)
    with SceneReader(scene_from_dataarray(floats.rename("f"), BANDS)) as a:
        data_f, valid = a.read(0, 0, 20, 20)
    assert not valid[:10, :10].any() and valid[10:, 10:].all() and np.isfinite(data_f).all()


def test_tiny_chunks_get_a_plan_warning(make_geotiff) -> None:
    if "demo" not in shipped_models():
        pytest.skip("demo model not built")
    p = plan([_array(make_geotiff)], "demo", DetectSettings(tile_size=128, overlap=32))
    assert any("rechunk" in w and src == "xarray:g" for src, w in p.warnings)
    p = plan([_array(make_geotiff).chunk({"y": 64, "x": 64})], "demo", DetectSettings(tile_size=128, overlap=32))
    assert not any("rechunk" in w for _, w in p.warnings)


@demo
def test_a_dask_backed_array_runs_on_a_distributed_cluster(scene_file: Path, tmp_path: Path) -> None:
    """Each task gets the array's graph (pickled) and reads its windows from the file in the worker."""
    from distributed import Client, LocalCluster

    from_file = detect([scene_file], "demo", tmp_path / "file", SETTINGS)
    da = sitewatch.open_scene(scene_file, chunks=256)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        on_cluster = detect(da, "demo", tmp_path / "cluster", SETTINGS, scheduler=cluster.scheduler_address)
    _same_detections(from_file, on_cluster)


def test_a_cf_style_array_as_odc_geo_writes_it_is_georeferenced(make_geotiff) -> None:
    """No rioxarray metadata: x/y pixel-centre coordinates and a ``spatial_ref`` coordinate holding
    the CRS as WKT (what odc-geo and CF writers give) are enough."""
    path = make_geotiff(width=40, height=30, descriptions=BANDS, name="cf.tif")
    file_scene = sitewatch.imagery.scenes.scene.open_scene(path, BANDS)
    with rasterio.open(path) as src:
        pixels, t, wkt = src.read(), src.transform, src.crs.to_wkt()
    da = xr.DataArray(
        pixels, dims=("band", "y", "x"), name="cf",
        coords={"band": ["blue", "green", "red", "nir"], "x": t.c + t.a * (np.arange(40) + 0.5),
                "y": t.f + t.e * (np.arange(30) + 0.5), "spatial_ref": ((), 0, {"crs_wkt": wkt, "spatial_ref": wkt})},
    )
    scene = scene_from_dataarray(da, BANDS)
    assert scene.affine.almost_equals(file_scene.affine) and scene.crs_wkt == file_scene.crs_wkt
    with SceneReader(file_scene) as f, SceneReader(scene) as a:
        np.testing.assert_array_equal(f.read(0, 0, 40, 30)[0], a.read(0, 0, 40, 30)[0])
