"""Property-based tests of label and config parsing (hypothesis), and a short run of the fuzz script.

The input strategies (arbitrary JSON, valid GeoJSON/COCO/config documents and their
mutations) live in ``scripts/fuzz_parsers.py``, so the long fuzz runs and these tests draw
from the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from sitewatch.imagery.errors import InputError, SitewatchError, UsageError
from sitewatch.imagery.scenes.georef import pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.scene import Scene, open_scene
from sitewatch.training.config import load_config, parse_override
from sitewatch.training.labels import LabelError, LabelOptions, read_labels
from tests.scriptload import load_script

BANDS = ("B02", "B03", "B04", "B08")
CLASSES = ("vessel", "kiln")
SWAPPED = "coordinates look like lat, lon; GeoJSON is lon, lat"


fuzz = load_script("fuzz_parsers")

#: name -> (CRS, geotransform) of the 64 x 64 scenes the labels are drawn on.
GRIDS = {
    "utm": ("EPSG:32633", Affine(10, 0, 500_000, 0, -10, 4_800_000)),
    "geographic": ("EPSG:4326", Affine(0.0001, 0, 15.0, 0, -0.0001, 45.0)),
    "web-mercator": ("EPSG:3857", Affine(10, 0, 1_669_792.0, 0, -10, 5_622_000.0)),
}
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("labels")


@pytest.fixture(scope="module")
def scenes(workdir: Path) -> dict[str, Scene]:
    out = {}
    for name, (crs, transform) in GRIDS.items():
        path = workdir / f"{name}.tif"
        profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 4, "dtype": "uint16", "crs": crs,
                   "transform": transform}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.full((4, 64, 64), 500, dtype="uint16"))
        out[name] = open_scene(path, BANDS)
    return out


def inner_lonlat_box(scene: Scene, margin: float = 0.02) -> tuple[float, float, float, float]:
    """A lon/lat rectangle inside the scene: the corners' inner bounds, shrunk by ``margin`` of its size."""
    cols = np.array([0.0, 64.0, 0.0, 64.0])
    rows = np.array([0.0, 0.0, 64.0, 64.0])
    lon, lat = to_lonlat(scene.crs_wkt, *pixel_to_map(scene.affine, cols, rows))
    west, east = max(lon[0], lon[2]), min(lon[1], lon[3])
    north, south = min(lat[0], lat[1]), max(lat[2], lat[3])
    dx, dy = (east - west) * margin, (north - south) * margin
    return west + dx, south + dy, east - dx, north - dy


def lonlat_to_pixel(scene: Scene, lon: list[float], lat: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel columns and rows of lon/lat points, with pyproj and the affine alone (no sitewatch code)."""
    x, y = Transformer.from_crs("OGC:CRS84", scene.crs_wkt, always_xy=True).transform(lon, lat)
    inv = ~scene.affine
    x, y = np.asarray(x), np.asarray(y)
    return inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f


#: Ordered pairs of fractions at least 1 % apart: where a box's sides lie within the rectangle.
sides = st.tuples(st.floats(0, 1), st.floats(0, 1)).filter(lambda t: abs(t[0] - t[1]) >= 0.01).map(sorted)


@st.composite
def lonlat_boxes(draw: st.DrawFn) -> list[tuple[float, float, float, float, str]]:
    """1 to 8 boxes as fractions ``fx0, fy0, fx1, fy1`` of a rectangle, each with a class."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        (fx0, fx1), (fy0, fy1) = draw(sides), draw(sides)
        out.append((fx0, fy0, fx1, fy1, draw(st.sampled_from(CLASSES))))
    return out


def _write(workdir: Path, name: str, data: Any) -> Path:
    path = workdir / name
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


def _box_feature(ring: list[list[float]], cls: str, clockwise: bool) -> dict[str, Any]:
    ring = ring[::-1] if clockwise else ring
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {"class": cls}}


# --- (a) valid labels round-trip ----------------------------------------------------------------------


@pytest.mark.parametrize("grid", list(GRIDS))
@PROPERTY
@given(boxes=lonlat_boxes(), clockwise=st.booleans())
def test_lonlat_boxes_inside_a_scene_round_trip(
    workdir: Path, scenes: dict[str, Scene], grid: str, boxes: list[tuple[float, ...]], clockwise: bool
) -> None:
    scene = scenes[grid]
    west, south, east, north = inner_lonlat_box(scene)
    rects = [
        (west + fx0 * (east - west), south + fy0 * (north - south), west + fx1 * (east - west),
         south + fy1 * (north - south), cls)
        for fx0, fy0, fx1, fy1, cls in boxes
    ]
    features = [
        _box_feature([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], str(cls), clockwise)
        for x0, y0, x1, y1, cls in rects
    ]
    path = _write(workdir, "boxes.geojson", {"type": "FeatureCollection", "features": features})

    out = read_labels([path], [scene], LabelOptions(classes=CLASSES))

    assert out.problems == [] and out.counts["positives"] == len(rects)
    got = out.scenes[0].boxes
    assert out.scenes[0].labels.tolist() == [CLASSES.index(str(r[4])) for r in rects]
    # Pixel boxes: inside the scene, with area, and the pixel bounds of the lon/lat corners.
    assert ((got[:, 0] >= 0) & (got[:, 1] >= 0) & (got[:, 2] <= 64) & (got[:, 3] <= 64)).all()
    assert ((got[:, 2] > got[:, 0]) & (got[:, 3] > got[:, 1])).all()
    for box, (x0, y0, x1, y1, _) in zip(got, rects, strict=True):
        cols, rows = lonlat_to_pixel(scene, [x0, x1, x1, x0], [y0, y0, y1, y1])
        np.testing.assert_allclose(box, [cols.min(), rows.min(), cols.max(), rows.max()], atol=1e-6)
        # ... and back to lon/lat: the rectangle again, within 0.02 pixel (grid convergence
        # makes the UTM box a hair larger than the rotated rectangle it holds).
        lon, lat = to_lonlat(scene.crs_wkt, *pixel_to_map(scene.affine, box[[0, 2, 2, 0]], box[[1, 1, 3, 3]]))
        tol_lon, tol_lat = 0.02 * (east - west) / 60, 0.02 * (north - south) / 60
        np.testing.assert_allclose([lon.min(), lon.max()], [x0, x1], atol=tol_lon, rtol=0)
        np.testing.assert_allclose([lat.min(), lat.max()], [y0, y1], atol=tol_lat, rtol=0)


@PROPERTY
@given(boxes=lonlat_boxes())
def test_swapped_or_projected_boxes_are_named_as_such(
    workdir: Path, scenes: dict[str, Scene], boxes: list[tuple[float, ...]]
) -> None:
    scene = scenes["utm"]
    west, south, east, north = inner_lonlat_box(scene)
    rings = []
    for fx0, fy0, fx1, fy1, _ in boxes:
        x0, x1 = west + fx0 * (east - west), west + fx1 * (east - west)
        y0, y1 = south + fy0 * (north - south), south + fy1 * (north - south)
        rings.append([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    plain = read_labels(
        [_write(workdir, "plain.geojson", {"type": "FeatureCollection",
                                            "features": [_box_feature(r, "kiln", False) for r in rings]})],
        [scene], LabelOptions(classes=CLASSES))

    # lat, lon order: every label is reported as swapped, and the error says what to do.
    swapped = [[[y, x] for x, y in ring] for ring in rings]
    path = _write(workdir, "swapped.geojson",
                  {"type": "FeatureCollection", "features": [_box_feature(r, "kiln", False) for r in swapped]})
    out = read_labels([path], [scene], LabelOptions(classes=CLASSES, skip_problems=True))
    assert {p.kind for p in out.problems} == {"swapped-coordinates"} and len(out.problems) == len(rings)
    with pytest.raises(LabelError, match=SWAPPED):
        read_labels([path], [scene], LabelOptions(classes=CLASSES))

    # UTM metres with no CRS: reported as projected; declared with the option, the same boxes.
    to_utm = Transformer.from_crs("OGC:CRS84", "EPSG:32633", always_xy=True)
    metres = [[list(to_utm.transform(x, y)) for x, y in ring] for ring in rings]
    path = _write(workdir, "metres.geojson",
                  {"type": "FeatureCollection", "features": [_box_feature(r, "kiln", False) for r in metres]})
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], LabelOptions(classes=CLASSES))
    assert "look like projected metres" in str(err.value) and "--labels-crs EPSG:32633" in str(err.value)
    declared = read_labels([path], [scene], LabelOptions(classes=CLASSES, crs="EPSG:32633"))
    np.testing.assert_allclose(declared.scenes[0].boxes, plain.scenes[0].boxes, atol=1e-6)


# --- (b) hostile input: load, or a SitewatchError on one line ---------------------------------------


def _read_or_clean_error(path: Path, scene: Scene, options: LabelOptions) -> None:
    """Read ``path``; any exception but a one-line SitewatchError fails the test."""
    try:
        result = read_labels([path], [scene], options)
    except SitewatchError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message
        if isinstance(exc, InputError):
            assert message.startswith(f"{path}: ")
        else:
            assert isinstance(exc, UsageError)
        return
    fuzz._check_result(result, scene)


@pytest.mark.parametrize("skip", [False, True])
@PROPERTY
@given(value=fuzz.json_values)
def test_any_json_value_loads_or_raises_a_sitewatch_error(
    workdir: Path, scenes: dict[str, Scene], skip: bool, value: Any
) -> None:
    path = _write(workdir, "any.geojson", value)
    _read_or_clean_error(path, scenes["utm"], LabelOptions(classes=CLASSES, skip_problems=skip))


@PROPERTY
@given(data=st.data())
def test_mutated_geojson_loads_or_raises_a_sitewatch_error(
    workdir: Path, scenes: dict[str, Scene], data: st.DataObject
) -> None:
    scene = scenes["utm"]
    doc = data.draw(fuzz.mutated(fuzz.geojson_docs(fuzz.lonlat_bounds(scene)), fuzz.json_values))
    options = data.draw(fuzz.label_options(scene))
    _read_or_clean_error(_write(workdir, "mutated.geojson", doc), scene, options)


@PROPERTY
@given(data=st.data())
def test_mutated_coco_loads_or_raises_a_sitewatch_error(
    workdir: Path, scenes: dict[str, Scene], data: st.DataObject
) -> None:
    # The COCO documents name their first image scene.tif: give the UTM scene that name.
    scene = scenes["utm"]
    named = workdir / "scene.tif"
    if not named.exists():
        named.write_bytes(Path(scene.source).read_bytes())
    scene = open_scene(named, BANDS)
    doc = data.draw(fuzz.mutated(fuzz.coco_docs(), fuzz.json_values))
    options = data.draw(fuzz.label_options(scene))
    _read_or_clean_error(_write(workdir, "coco.json", doc), scene, options)


@PROPERTY
@given(case=fuzz.config_files())
def test_any_config_file_loads_or_raises_a_usage_error(workdir: Path, case: tuple[bytes, list[str]]) -> None:
    data, sets = case
    path = workdir / "config.yaml"
    path.write_bytes(data)
    try:
        overrides = [parse_override(s) for s in sets]
        load_config(path, overrides)
    except UsageError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc)


# --- the fuzz script ----------------------------------------------------------------------------------


def test_fuzz_script_runs_every_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["--examples", "25", "--seed", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["target", "examples", "loaded", "SitewatchError", "crashes", "seconds"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {"geojson", "coco", "config"}
    for examples, loaded, errors, crashes, _ in rows.values():
        assert int(examples) == 25 and int(loaded) + int(errors) == 25 and crashes == "0"


def test_fuzz_script_reports_a_crash(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(fuzz, "load_config", broken)
    assert fuzz.main(["--examples", "5", "--seed", "0", "--target", "config"]) == 1
    captured = capsys.readouterr()
    assert "CRASH in config" in captured.err and "ZeroDivisionError: planted" in captured.err
