"""Tests for sitewatch.imagery.synthetic.highres: seeded high-resolution RGB scenes with brick kilns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.features import rasterize

from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.georef import from_lonlat, map_to_pixel
from sitewatch.imagery.synthetic.highres import (
    BANDS,
    KILN_LENGTH_M,
    KILN_WIDTH_M,
    Kiln,
    kilns_to_geojson,
    make_rgb_kiln_scene,
    scene_transform,
)

SEED = 13
SIZE = 640  # 0.41 km2 at 1 m: 6 kilns is the upper end of the default density
N_KILNS = 6


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("rgb") / "scene.tif"
    kilns = make_rgb_kiln_scene(path, SEED, SIZE, SIZE, n_kilns=N_KILNS)
    with rasterio.open(path) as ds:
        data = ds.read()
        transform, crs = ds.transform, ds.crs
    return {"path": path, "kilns": kilns, "data": data, "transform": transform, "crs": crs}


def _mask(kilns: list[Kiln], shape: tuple[int, int]) -> np.ndarray:
    shapes = [({"type": "Polygon", "coordinates": [[*k.polygon, k.polygon[0]]]}, 1) for k in kilns]
    out: np.ndarray = rasterize(shapes, out_shape=shape, transform=Affine.identity()).astype(bool)
    return out


def _ring(shape: tuple[int, int], box: tuple[float, float, float, float], gap: int, width: int) -> np.ndarray:
    """Pixels ``gap`` to ``gap + width`` outside ``box``."""
    x0, y0, x1, y1 = box
    r0, r1 = int(np.floor(y0)) - gap - width, int(np.ceil(y1)) + gap + width
    c0, c1 = int(np.floor(x0)) - gap - width, int(np.ceil(x1)) + gap + width
    outer = np.zeros(shape, dtype=bool)
    inner = np.zeros_like(outer)
    outer[max(r0, 0) : r1, max(c0, 0) : c1] = True
    inner[max(r0 + width, 0) : r1 - width, max(c0 + width, 0) : c1 - width] = True
    return outer & ~inner


def test_same_seed_same_pixels(scene: dict[str, Any], tmp_path: Path) -> None:
    again = make_rgb_kiln_scene(tmp_path / "again.tif", SEED, SIZE, SIZE, n_kilns=N_KILNS)
    other = make_rgb_kiln_scene(tmp_path / "other.tif", SEED + 1, SIZE, SIZE, n_kilns=N_KILNS)
    with rasterio.open(tmp_path / "again.tif") as a, rasterio.open(tmp_path / "other.tif") as b:
        assert a.read().tobytes() == scene["data"].tobytes()
        assert a.transform == scene["transform"]
        assert b.read().tobytes() != scene["data"].tobytes()
        assert b.transform != scene["transform"]
    assert again == scene["kilns"]
    assert other != scene["kilns"]


def test_file_layout(scene: dict[str, Any]) -> None:
    with rasterio.open(scene["path"]) as ds:
        assert ds.count == 3
        assert ds.dtypes == ("uint8",) * 3
        assert ds.descriptions == BANDS == ("red", "green", "blue")
        assert ds.crs == rasterio.crs.CRS.from_epsg(32644)
        assert ds.block_shapes == [(256, 256)] * 3
        assert ds.compression is not None and ds.compression.value == "DEFLATE"
        assert ds.nodata is None
        t = ds.transform
    assert (t.a, t.b, t.d, t.e) == (1.0, 0.0, 0.0, -1.0)
    assert 300_000 <= t.c and t.c + SIZE <= 700_000
    assert 2_800_000 <= t.f - SIZE and t.f <= 3_200_000
    assert scene_transform(SEED, SIZE, SIZE) == t
    data = scene["data"]
    assert data.std(axis=(1, 2)).min() > 10  # a real scene, not a flat fill


def test_kilns_inside_apart_and_sized(scene: dict[str, Any]) -> None:
    kilns: list[Kiln] = scene["kilns"]
    assert len(kilns) == N_KILNS
    assert any(k.cut for k in kilns), "this seed should have a kiln cut by the scene edge"
    boxes = np.array([k.bbox for k in kilns])
    x0, y0, x1, y1 = boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= SIZE).all() and (y1 <= SIZE).all()
    assert (x1 > x0 + 10).all() and (y1 > y0 + 10).all()
    for i, k in enumerate(kilns):
        poly = np.array(k.polygon)
        assert len(poly) >= 4
        assert tuple(poly.min(axis=0)) == (k.bbox[0], k.bbox[1])
        assert tuple(poly.max(axis=0)) == (k.bbox[2], k.bbox[3])
        assert k.bbox[0] <= k.centre[0] <= k.bbox[2] and k.bbox[1] <= k.centre[1] <= k.bbox[3]
        on_edge = k.bbox[0] == 0 or k.bbox[1] == 0 or k.bbox[2] == SIZE or k.bbox[3] == SIZE
        assert k.cut == on_edge
        assert KILN_LENGTH_M[0] <= k.length_m <= KILN_LENGTH_M[1]
        assert KILN_WIDTH_M[0] <= k.width_m <= min(KILN_WIDTH_M[1], k.length_m)
        if not k.cut:  # the box of a rotated kiln lies between its width and its diagonal
            side = max(k.bbox[2] - k.bbox[0], k.bbox[3] - k.bbox[1])
            assert k.width_m - 1 <= side <= np.hypot(k.length_m, k.width_m) + 1
        for j in range(i + 1, len(kilns)):
            o = kilns[j].bbox
            assert not (k.bbox[0] < o[2] and o[0] < k.bbox[2] and k.bbox[1] < o[3] and o[1] < k.bbox[3])


def test_geojson_maps_back_onto_the_boxes(scene: dict[str, Any]) -> None:
    kilns: list[Kiln] = scene["kilns"]
    fc = json.loads(json.dumps(kilns_to_geojson(kilns, scene["transform"], scene["crs"])))
    assert fc["type"] == "FeatureCollection"
    assert len(fc["features"]) == len(kilns)
    wkt = CRS.from_user_input(scene["crs"]).to_wkt()
    for feature, kiln in zip(fc["features"], kilns, strict=True):
        assert feature["properties"]["class"] == "kiln"
        assert feature["geometry"]["type"] == "Polygon"
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert len(ring) >= 5 and (ring[0] == ring[-1]).all()
        lon, lat = ring[:-1, 0], ring[:-1, 1]
        assert (np.abs(lon - 80) < 6).all() and (np.abs(lat - 27) < 3).all()  # northern India
        area2 = (lon * np.roll(lat, -1) - np.roll(lon, -1) * lat).sum()
        assert area2 > 0, "exterior ring must be counter-clockwise"
        xs, ys = from_lonlat(wkt, lon, lat)
        cols, rows = map_to_pixel(scene["transform"], xs, ys)
        box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
        assert np.abs(box - np.array(kiln.bbox)).max() < 1.0


def test_kilns_differ_from_their_surroundings(scene: dict[str, Any]) -> None:
    data = scene["data"].astype(np.float64)
    shape = data.shape[1:]
    distances = []
    for k in scene["kilns"]:
        if k.cut:
            continue
        inside = _mask([k], shape)
        around = _ring(shape, k.bbox, 4, 8) & ~_mask(scene["kilns"], shape)
        distances.append(np.linalg.norm(data[:, inside].mean(axis=1) - data[:, around].mean(axis=1)))
    assert len(distances) >= 4
    assert min(distances) > 5
    assert np.median(distances) > 15


def test_no_single_colour_rule_finds_the_kilns(scene: dict[str, Any]) -> None:
    data = scene["data"].astype(np.int32)
    kiln = _mask(scene["kilns"], data.shape[1:])
    red_excess = data[0] - data[1]
    for x in range(0, 60, 10):
        flagged = red_excess > x
        inside, outside = int((flagged & kiln).sum()), int((flagged & ~kiln).sum())
        if x <= 30:
            assert inside > 0.1 * kiln.sum(), f"red > green + {x} should flag kiln pixels"
        # Brick-red buildings, roofs, stacks, rubble and reddish soil: most flagged pixels are not kilns.
        assert outside > 3 * inside, f"red > green + {x}: {outside} pixels outside kilns vs {inside} inside"
    brightness = data.sum(axis=0)
    for y in (150, 250, 350):  # dark (soot, shadow) rules catch trees, ponds, shadows and roofs as well
        flagged = brightness < y
        assert int((flagged & ~kiln).sum()) > int((flagged & kiln).sum())


def test_pixel_size_and_default_count(tmp_path: Path) -> None:
    # 256 pixels of 4 m: 1 km of ground on a side, so the default count is that of 1024 x 1024 at 1 m.
    kilns = make_rgb_kiln_scene(tmp_path / "coarse.tif", 3, 256, 256, pixel_m=4.0)
    assert 8 <= len(kilns) <= 15
    with rasterio.open(tmp_path / "coarse.tif") as ds:
        assert ds.transform.a == 4.0 and ds.transform.e == -4.0
    for k in kilns:
        if not k.cut:
            assert max(k.bbox[2] - k.bbox[0], k.bbox[3] - k.bbox[1]) <= np.hypot(k.length_m, k.width_m) / 4 + 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 32}, "too small"),
        ({"pixel_m": 0.0}, "pixel_m"),
        ({"pixel_m": float("nan")}, "pixel_m"),
        ({"n_kilns": -1}, "negative"),
        ({"crs": "EPSG:4326"}, "projected"),
        ({"crs": "not a crs"}, "not understood"),
        ({"width": 64, "height": 64, "n_kilns": 50}, "could not fit"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        make_rgb_kiln_scene(tmp_path / "bad.tif", 0, **kwargs)
    assert not (tmp_path / "bad.tif").exists()
