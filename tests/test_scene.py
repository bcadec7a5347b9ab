"""Tests for sitewatch.imagery.scenes.scene: opening scenes, mapping bands, refusing bad rasters, reading windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from sitewatch.imagery.errors import (
    BandError,
    CorruptRasterError,
    InputError,
    NotARasterError,
    NotGeoreferencedError,
    UsageError,
)
from sitewatch.imagery.scenes.scene import SceneReader, open_scene
from sitewatch.imagery.scenes.tiling import Tile, TileGrid

MODEL_BANDS = ("B02", "B03", "B04", "B08")
S2_NAME = "2023-08-17-00:00_2023-08-17-23:59_Sentinel-2_L2A_{band}_(Raw).tiff"


def _band_dir(tmp_path: Path, make_geotiff, bands, *, transforms=None, size=(32, 32)) -> Path:
    """A directory of single-band Sentinel-2 style exports; each band's pixels equal its index."""
    d = tmp_path / "s2 export"
    d.mkdir()
    for k, band in enumerate(bands):
        data = np.full((1, size[1], size[0]), 100 * (k + 1), dtype="uint16")
        path = make_geotiff(size[0], size[1], bands=1, data=data, transform=(transforms or {}).get(band))
        path.rename(d / S2_NAME.format(band=band))
    return d


# --- band mapping -----------------------------------------------------------------------


def test_band_descriptions_map_bands_by_name(make_geotiff):
    order = ["B08", "B03", "B02", "B04"]
    data = np.stack([np.full((16, 16), 10 * (i + 1), dtype="uint16") for i in range(4)])
    path = make_geotiff(16, 16, data=data, descriptions=order)

    scene = open_scene(path, MODEL_BANDS)

    assert [b.name for b in scene.bands] == list(MODEL_BANDS)
    assert [b.index for b in scene.bands] == [order.index(b) + 1 for b in MODEL_BANDS]
    with SceneReader(scene) as reader:
        got, _ = reader.read(0, 0, 4, 4)
    # B02 is file band 3 (value 30), B03 band 2 (20), B04 band 4 (40), B08 band 1 (10).
    assert got[:, 0, 0].tolist() == [30.0, 20.0, 40.0, 10.0]


def test_descriptions_with_extra_text_still_name_bands(make_geotiff):
    path = make_geotiff(16, 16, descriptions=["nir B08", "B04 (red)", "B03 green", "blue B02"])
    assert [b.index for b in open_scene(path, MODEL_BANDS).bands] == [4, 3, 2, 1]


def test_four_unnamed_bands_are_positional(make_geotiff):
    scene = open_scene(make_geotiff(16, 16, bands=4), MODEL_BANDS)
    assert [b.index for b in scene.bands] == [1, 2, 3, 4]
    assert [b.name for b in scene.bands] == list(MODEL_BANDS)


def test_four_named_bands_with_one_missing_are_not_positional(make_geotiff):
    # B05 sits where B08 would be: mapping by position would feed red-edge as NIR.
    path = make_geotiff(16, 16, descriptions=["B02", "B03", "B04", "B05"])
    with pytest.raises(BandError, match="B08") as info:
        open_scene(path, MODEL_BANDS)
    assert "--bands" in str(info.value)


def test_six_unnamed_bands_need_bands_flag(make_geotiff):
    path = make_geotiff(16, 16, bands=6)
    with pytest.raises(BandError) as info:
        open_scene(path, MODEL_BANDS)
    msg = str(info.value)
    assert "--bands" in msg and str(path) in msg and "6 band" in msg


def test_bands_flag_by_index(make_geotiff):
    path = make_geotiff(16, 16, bands=6)
    scene = open_scene(path, MODEL_BANDS, ("2", "3", "4", "6"))
    assert [b.index for b in scene.bands] == [2, 3, 4, 6]
    assert [b.name for b in scene.bands] == list(MODEL_BANDS)


def test_bands_flag_by_name(make_geotiff):
    path = make_geotiff(16, 16, bands=6, descriptions=["B01", "B02", "B03", "B04", "B05", "B8A"])
    scene = open_scene(path, MODEL_BANDS, ("b02", "B03", "B04", "B8A"))
    assert [b.index for b in scene.bands] == [2, 3, 4, 6]


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        (("1", "2", "3"), "model takes 4"),
        (("1", "2", "3", "7"), "--bands 7"),
        (("B02", "B03", "B04", "B11"), "--bands B11"),
    ],
)
def test_bad_bands_flag_is_a_usage_error(make_geotiff, flag, needle):
    path = make_geotiff(16, 16, bands=6, descriptions=["B01", "B02", "B03", "B04", "B05", "B08"])
    with pytest.raises(UsageError, match=needle):
        open_scene(path, MODEL_BANDS, flag)


# --- band directories -------------------------------------------------------------------


def test_band_directory_is_one_scene_in_model_order(tmp_path, make_geotiff):
    # Written out of order, with an extra band the model does not use.
    d = _band_dir(tmp_path, make_geotiff, ["B08", "B05", "B04", "B02", "B03"])

    scene = open_scene(d, MODEL_BANDS)

    assert scene.name == "s2 export"
    assert [b.name for b in scene.bands] == list(MODEL_BANDS)
    assert [Path(b.path).name for b in scene.bands] == [S2_NAME.format(band=b) for b in MODEL_BANDS]
    assert all(b.index == 1 for b in scene.bands)
    assert (scene.width, scene.height) == (32, 32)
    with SceneReader(scene) as reader:
        data, valid = reader.read(0, 0, 8, 8)
    # Values were 100 * (write order): B02=400, B03=500, B04=300, B08=100.
    assert data[:, 3, 3].tolist() == [400.0, 500.0, 300.0, 100.0]
    assert valid.all()


def test_band_directory_given_as_relative_path(tmp_path, make_geotiff, monkeypatch):
    # ':' in a relative file name must not be taken for a GDAL driver prefix.
    d = _band_dir(tmp_path, make_geotiff, MODEL_BANDS)
    monkeypatch.chdir(d)
    scene = open_scene(".", MODEL_BANDS)
    with SceneReader(scene) as reader:
        data, _ = reader.read(0, 0, 4, 4)
    assert data[:, 0, 0].tolist() == [100.0, 200.0, 300.0, 400.0]


def test_band_files_on_different_grids_are_refused(tmp_path, make_geotiff):
    shifted = {"B04": Affine(10, 0, 500_010, 0, -10, 4_800_000)}
    d = _band_dir(tmp_path, make_geotiff, MODEL_BANDS, transforms=shifted)
    with pytest.raises(BandError, match="same grid") as info:
        open_scene(d, MODEL_BANDS)
    assert "B04" in str(info.value)


def test_band_directory_missing_a_band_is_refused(tmp_path, make_geotiff):
    d = _band_dir(tmp_path, make_geotiff, ["B02", "B03", "B04"])
    with pytest.raises(BandError) as info:
        open_scene(d, MODEL_BANDS)
    assert str(d) in str(info.value) and "--bands" in str(info.value)


def test_band_directory_missing_a_band_reads_zeros_for_training(tmp_path, make_geotiff):
    d = _band_dir(tmp_path, make_geotiff, ["B03", "B04", "B08"])
    scene = open_scene(d, MODEL_BANDS, allow_missing=True)
    assert scene.missing_bands == ("B02",)
    assert [b.name for b in scene.bands] == list(MODEL_BANDS)
    assert len(scene.files) == 3
    with SceneReader(scene) as reader:
        data, valid = reader.read(0, 0, 8, 8)
        ov, _, _ = reader.overview(16)
    # B02 is zeros; the others keep their files' values (B03 is the directory's first file: 100)
    assert data[0].max() == 0 and ov[0].max() == 0
    assert data[1].min() == 100 and data[3].min() == 300
    assert valid.all()


def test_band_directory_with_none_of_the_bands_is_refused_even_for_training(tmp_path, make_geotiff):
    d = _band_dir(tmp_path, make_geotiff, ["B05", "B06"])
    with pytest.raises(BandError):
        open_scene(d, MODEL_BANDS, allow_missing=True)


def test_band_directory_with_a_wrong_band_is_refused(tmp_path, make_geotiff):
    d = _band_dir(tmp_path, make_geotiff, ["B02", "B03", "B04", "B05"])
    with pytest.raises(BandError, match="B08"):
        open_scene(d, MODEL_BANDS)


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_scene(tmp_path / "nope.tif", MODEL_BANDS)


# --- refusing bad rasters ---------------------------------------------------------------


def test_text_file_is_not_a_raster(tmp_path):
    path = tmp_path / "scene.tif"
    path.write_text("this is not a GeoTIFF\n")
    with pytest.raises(NotARasterError) as info:
        open_scene(path, MODEL_BANDS)
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError)


def test_raster_without_crs_is_refused_with_a_fix(make_geotiff):
    path = make_geotiff(16, 16, crs=None)
    with pytest.raises(NotGeoreferencedError) as info:
        open_scene(path, MODEL_BANDS)
    msg = str(info.value)
    assert str(path) in msg and "CRS" in msg and "gdal_edit" in msg


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("crs", [None, "EPSG:32633"])
def test_raster_without_geotransform_is_refused(make_geotiff, crs):
    path = make_geotiff(16, 16, crs=crs, transform=Affine.identity())
    with pytest.raises(NotGeoreferencedError) as info:
        open_scene(path, MODEL_BANDS)
    assert str(path) in str(info.value)
    if crs is not None:
        assert "geotransform" in str(info.value)


def test_truncated_geotiff_opens_but_fails_on_read(make_geotiff):
    path = make_geotiff(512, 512, bands=4)
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * 0.6)])

    scene = open_scene(path, MODEL_BANDS)  # metadata is intact: opening works

    with SceneReader(scene) as reader, pytest.raises(CorruptRasterError) as info:
        reader.overview(128)
    msg = str(info.value)
    assert str(path) in msg and "truncated" in msg
    assert "\n" not in msg


# --- reading windows --------------------------------------------------------------------


def test_nodata_and_edge_padding_are_invalid(make_geotiff):
    data = np.full((4, 40, 40), 500, dtype="uint16")
    data[:, 2, 3] = 0  # nodata in every band
    data[:, 35, 36] = 0
    data[1, 5, 5] = 0  # one band only: a real zero, the pixel stays valid
    path = make_geotiff(40, 40, nodata=0, data=data)
    scene = open_scene(path, MODEL_BANDS)
    first_tile = TileGrid(40, 40, 32, 0).tiles()[0]
    # A grid moves its last tiles back inside the raster; the reader still pads a window that
    # reaches past the edge (a raster smaller than a tile), as this one does.
    past_edge = Tile(index=3, row=1, col=1, row_off=32, col_off=32, size=32, core_row_start=32,
                     core_row_stop=40, core_col_start=32, core_col_stop=40)

    with SceneReader(scene) as reader:
        first, valid0 = reader.read_tile(first_tile)
        edge, valid1 = reader.read_tile(past_edge)

    assert first.shape == (4, 32, 32) and valid0.shape == (32, 32)
    assert not valid0[2, 3] and valid0[5, 5]
    assert valid0.sum() == 32 * 32 - 1
    # The window covers pixels 32..63: only 8 x 8 are inside the raster.
    assert edge.shape == (4, 32, 32)
    assert not valid1[8:, :].any() and not valid1[:, 8:].any()
    assert not valid1[3, 4]  # pixel (35, 36)
    assert valid1[:8, :8].sum() == 63
    assert (edge[:, 8:, :] == 0).all() and (edge[:, :, 8:] == 0).all()


def test_float_nan_pixels_are_invalid_and_zero_filled(make_geotiff):
    data = np.full((4, 16, 16), 0.25, dtype="float32")
    data[2, 4, 6] = np.nan
    data[:, 9, 9] = np.inf
    path = make_geotiff(16, 16, dtype="float32", data=data)
    scene = open_scene(path, MODEL_BANDS)
    with SceneReader(scene) as reader:
        got, valid = reader.read(0, 0, 16, 16)
        ov, ov_valid, _ = reader.overview(16)
    assert np.isfinite(got).all()
    assert got[2, 4, 6] == 0 and got[0, 4, 6] == pytest.approx(0.25)
    assert (got[:, 9, 9] == 0).all()
    assert not valid[4, 6] and not valid[9, 9]
    assert valid.sum() == 16 * 16 - 2
    assert np.isfinite(ov).all() and not ov_valid[4, 6]


def test_nan_nodata_value_is_honoured(make_geotiff):
    data = np.full((4, 16, 16), 3.0, dtype="float32")
    data[:, 0, 0] = np.nan
    path = make_geotiff(16, 16, dtype="float32", nodata=float("nan"), data=data)
    with SceneReader(open_scene(path, MODEL_BANDS)) as reader:
        got, valid = reader.read(0, 0, 16, 16)
    assert not valid[0, 0] and valid.sum() == 255 and got[:, 0, 0].tolist() == [0.0] * 4


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_every_pixel_type_reads_as_float32(make_geotiff, dtype):
    rng = np.random.default_rng(3)
    data = (rng.random((4, 24, 24)) * 200).astype(dtype)
    path = make_geotiff(24, 24, dtype=dtype, data=data)
    scene = open_scene(path, MODEL_BANDS)
    assert scene.dtype == dtype
    with SceneReader(scene) as reader:
        got, valid = reader.read(0, 0, 24, 24)
        tile, _ = reader.read_tile(TileGrid(24, 24, 32, 0).tiles()[0])
    assert got.dtype == np.float32 and tile.dtype == np.float32
    np.testing.assert_array_equal(got, data.astype(np.float32))
    assert valid.all()


def test_scene_is_small_and_picklable(make_geotiff):
    import pickle

    scene = open_scene(make_geotiff(16, 16), MODEL_BANDS)
    assert pickle.loads(pickle.dumps(scene)) == scene
    assert scene.pixel_size == pytest.approx(10.0)


def test_read_tiles_gives_what_read_tile_gives_for_every_tile(make_geotiff, tmp_path):
    from sitewatch.imagery.scenes.tiling import TileGrid

    path = make_geotiff(300, 210, nodata=0, seed=4)
    scene = open_scene(path, ("B02", "B03", "B04", "B08"))
    grid = TileGrid(300, 210, 64, 16)
    with SceneReader(scene) as reader:
        got = list(reader.read_tiles(grid.tiles()))
        assert [t for t, _ in got] == list(grid.tiles())
        for tile, read in got:
            data, valid = reader.read_tile(tile)
            np.testing.assert_array_equal(read[0], data)
            np.testing.assert_array_equal(read[1], valid)


def test_read_tiles_fails_only_the_tiles_a_damaged_block_touches(make_geotiff, tmp_path):
    from sitewatch.imagery.scenes.tiling import TileGrid

    good = make_geotiff(512, 512, seed=5)
    bad = tmp_path / "cut.tif"
    bad.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.6)])
    scene = open_scene(bad, ("B02", "B03", "B04", "B08"))
    grid = TileGrid(512, 512, 128, 32)
    with SceneReader(scene) as reader:
        one_by_one = []
        for t in grid.tiles():
            try:
                reader.read_tile(t)
                one_by_one.append(True)
            except InputError:
                one_by_one.append(False)
        together = [not isinstance(r, InputError) for _, r in reader.read_tiles(grid.tiles())]
    assert together == one_by_one
    assert any(together) and not all(together)


def test_colour_names_and_sentinel2_names_are_the_same_bands(tmp_path, make_geotiff):
    """A true-colour render (descriptions red, green, blue) and a band directory (B04, B03, B02)
    both open for a model of either naming, in the model's order."""
    render = make_geotiff(16, 16, bands=3, descriptions=("red", "green", "blue"))
    scene = open_scene(render, ("B04", "B03", "B02"))
    assert [b.index for b in scene.bands] == [1, 2, 3]
    scene = open_scene(render, ("blue", "green", "red"))
    assert [b.index for b in scene.bands] == [3, 2, 1]
    d = _band_dir(tmp_path, make_geotiff, ["B02", "B03", "B04"])
    scene = open_scene(d, ("red", "green", "blue"))
    assert [Path(b.path).name for b in scene.bands] == [S2_NAME.format(band=b) for b in ("B04", "B03", "B02")]
    assert open_scene(render, ("B04", "B03", "B02"), ["red", "green", "blue"]).bands == open_scene(render, ("B04", "B03", "B02")).bands
