"""Tests for sitewatch.imagery.synthetic.sentinel2: seeded scenes with planted vessels and kilns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS

from sitewatch.imagery.errors import SitewatchError, UsageError
from sitewatch.imagery.synthetic.sentinel2 import BANDS, PlantedObject, make_scene, truth_to_geojson

SMALL: dict[str, Any] = {"width": 256, "height": 256, "n_vessels": 6, "n_kilns": 5}


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        data: np.ndarray = ds.read()
    return data


def _boxes(objects: list[PlantedObject]) -> np.ndarray:
    return np.array([o.box for o in objects], dtype=float).reshape(-1, 4)


def _ring(data: np.ndarray, box: tuple[float, float, float, float], gap: int, width: int) -> np.ndarray:
    """Pixels ``(bands, k)`` in a ring ``gap`` to ``gap + width`` pixels outside ``box``."""
    x0, y0, x1, y1 = box
    r0, r1 = int(np.floor(y0)) - gap - width, int(np.ceil(y1)) + gap + width
    c0, c1 = int(np.floor(x0)) - gap - width, int(np.ceil(x1)) + gap + width
    outer = np.zeros(data.shape[1:], dtype=bool)
    inner = np.zeros_like(outer)
    outer[max(r0, 0) : r1, max(c0, 0) : c1] = True
    inner[max(r0 + width, 0) : r1 - width, max(c0 + width, 0) : c1 - width] = True
    return data[:, outer & ~inner]


def _inside(data: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return data[:, int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PlantedObject]]:
    """A full-size default scene, generated once for the module."""
    path = tmp_path_factory.mktemp("synthetic") / "scene.tif"
    return path, make_scene(path, seed=3)


def test_written_profile(scene: tuple[Path, list[PlantedObject]]) -> None:
    path, _ = scene
    with rasterio.open(path) as ds:
        assert ds.count == 4
        assert ds.dtypes == ("uint16",) * 4
        assert (ds.width, ds.height) == (1024, 1024)
        assert ds.descriptions == BANDS
        assert ds.nodata == 0
        assert CRS.from_user_input(ds.crs.to_wkt()).to_epsg() == 32633
        assert ds.transform == Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4_800_000.0)
        assert ds.block_shapes == [(256, 256)] * 4
        assert ds.profile["compress"].lower() == "deflate"
        assert ds.profile["tiled"]


def test_default_counts_and_classes(scene: tuple[Path, list[PlantedObject]]) -> None:
    _, objects = scene
    classes = [o.cls for o in objects]
    assert classes.count("vessel") == 25
    assert classes.count("kiln") == 15


def test_values_are_realistic(scene: tuple[Path, list[PlantedObject]]) -> None:
    path, _ = scene
    data = _read(path)
    assert data.min() >= 1  # 0 is nodata, and there is no border
    nir = data[3]
    water = nir < 1000
    assert 0.2 < water.mean() < 0.8
    assert 200 < np.median(nir[water]) < 800
    assert 2500 < np.median(nir[~water]) < 4500
    assert np.median(data[:3][:, water]) < 800
    assert 1200 < np.median(data[:3][:, ~water]) < 4000
    assert data.max() <= 12000


def test_boxes_inside_raster_and_disjoint(scene: tuple[Path, list[PlantedObject]]) -> None:
    _, objects = scene
    b = _boxes(objects)
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= 1024).all() and (b[:, 3] <= 1024).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    ix = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
    iy = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
    overlap = (ix > 0) & (iy > 0)
    np.fill_diagonal(overlap, False)
    assert not overlap.any()


def test_object_sizes(scene: tuple[Path, list[PlantedObject]]) -> None:
    _, objects = scene
    for o in objects:
        w, h = o.box[2] - o.box[0], o.box[3] - o.box[1]
        if o.cls == "vessel":
            assert min(w, h) >= 1.9
            assert max(w, h) <= 12.1
        else:
            assert 7 <= max(w, h) <= 20


def test_vessels_on_water(scene: tuple[Path, list[PlantedObject]]) -> None:
    path, objects = scene
    data = _read(path).astype(np.float32)
    for o in objects:
        if o.cls != "vessel":
            continue
        ring = _ring(data, o.box, gap=1, width=2)
        assert np.median(ring[3]) < 700, o  # dark NIR around: open water
        assert (_inside(data, o.box).max(axis=(1, 2)) > 4000).all(), o  # bright in every band


def test_kilns_on_land(scene: tuple[Path, list[PlantedObject]]) -> None:
    path, objects = scene
    data = _read(path).astype(np.float32)
    for o in objects:
        if o.cls != "kiln":
            continue
        ring = _ring(data, o.box, gap=1, width=2)
        inside = _inside(data, o.box).reshape(4, -1)
        assert ring[3].min() > 1200, o  # land all around
        assert np.median(inside[3]) < np.median(ring[3]), o  # less NIR than the vegetation
        b02, b03, b04 = (inside[k].max() for k in range(3))
        assert b04 > b03 and b04 > b02, o  # reddish-brown
        cx, cy = int((o.box[0] + o.box[2]) / 2), int((o.box[1] + o.box[3]) / 2)
        assert data[:3, cy, cx].max() < 1200, o  # dark centre


def test_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "c.tif"
    objs_a = make_scene(a, seed=11, **SMALL)
    objs_b = make_scene(b, seed=11, **SMALL)
    objs_c = make_scene(c, seed=12, **SMALL)
    assert objs_a == objs_b
    assert _read(a).tobytes() == _read(b).tobytes()
    assert objs_a != objs_c
    assert _read(a).tobytes() != _read(c).tobytes()


def test_nodata_border(tmp_path: Path) -> None:
    path = tmp_path / "border.tif"
    objects = make_scene(path, seed=5, nodata_border=40, **SMALL)
    data = _read(path)
    assert (data[:, :, :40] == 0).all()
    assert (data[:, :, 40:] > 0).all()
    assert len(objects) == SMALL["n_vessels"] + SMALL["n_kilns"]
    assert (_boxes(objects)[:, 0] >= 40).all()


def test_custom_grid(tmp_path: Path) -> None:
    path = tmp_path / "grid.tif"
    make_scene(path, seed=1, crs="EPSG:32644", origin=(300000.0, 3_000_000.0), pixel_size=20.0, **SMALL)
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32644
        assert ds.transform == Affine(20.0, 0.0, 300000.0, 0.0, -20.0, 3_000_000.0)
        assert (ds.width, ds.height) == (256, 256)


def test_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    path.write_bytes(b"old")
    make_scene(path, seed=2, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tif"]
    assert _read(path).shape == (4, 256, 256)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 10},
        {"pixel_size": 0.0},
        {"n_vessels": -1},
        {"nodata_border": 200},
        {"crs": "EPSG:not-a-code"},
        {"n_vessels": 500},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    args = {**SMALL, **kwargs}
    with pytest.raises(UsageError):
        make_scene(tmp_path / "bad.tif", seed=0, **args)
    assert not list(tmp_path.iterdir())


def test_planted_object_validates() -> None:
    with pytest.raises(UsageError):
        PlantedObject("boat", (0.0, 0.0, 1.0, 1.0))
    with pytest.raises(SitewatchError):
        PlantedObject("kiln", (5.0, 0.0, 1.0, 1.0))


def test_truth_to_geojson(scene: tuple[Path, list[PlantedObject]]) -> None:
    path, objects = scene
    with rasterio.open(path) as ds:
        transform, crs = ds.transform, ds.crs
    fc = truth_to_geojson(objects, transform, crs)
    assert fc["type"] == "FeatureCollection"
    assert len(fc["features"]) == len(objects)
    for feature, obj in zip(fc["features"], objects, strict=True):
        assert feature["properties"]["class"] == obj.cls
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2)
        assert (ring[0] == ring[-1]).all()
        # EPSG:32633 near 500 km easting, 4800 km northing is the Adriatic: ~15 E, ~43 N.
        assert (ring[:, 0] > 14.9).all()
        assert (ring[:, 0] < 15.2).all()
        assert (ring[:, 1] > 43.2).all()
        assert (ring[:, 1] < 43.4).all()
        x, y = ring[:-1, 0], ring[:-1, 1]
        assert (x * np.roll(y, -1) - np.roll(x, -1) * y).sum() > 0  # counter-clockwise


def test_truth_to_geojson_south_up_stays_counter_clockwise() -> None:
    south_up = Affine(10.0, 0.0, 500000.0, 0.0, 10.0, 4_700_000.0)
    fc = truth_to_geojson([PlantedObject("vessel", (1.0, 1.0, 5.0, 3.0))], south_up, "EPSG:32633")
    ring = np.array(fc["features"][0]["geometry"]["coordinates"][0])
    x, y = ring[:-1, 0], ring[:-1, 1]
    assert (x * np.roll(y, -1) - np.roll(x, -1) * y).sum() > 0


def test_truth_to_geojson_empty() -> None:
    fc = truth_to_geojson([], Affine.identity(), "EPSG:32633")
    assert fc == {"type": "FeatureCollection", "features": []}
