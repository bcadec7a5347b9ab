"""Tests for sitewatch.imagery.detect.mapview: the offline candidate map."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sitewatch.imagery.detect.mapview import MapLayer, render_map_html
from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.quicklook import quicklook_rgb

EVIL = "<script>alert(1)</script>"


def _layer(
    name: str = "S2A_20240101_T33TWG", n: int = 3, *, seed: int = 0, scale: float = 2.0, cls: str | None = None
) -> MapLayer:
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 100, n)
    y0 = rng.uniform(0, 60, n)
    boxes = np.stack([x0, y0, x0 + 8, y0 + 5], axis=1)
    classes = tuple(cls or ("vessel", "kiln")[i % 2] for i in range(n))
    return MapLayer(
        scene=name,
        image=rng.integers(0, 255, size=(40, 64, 3), dtype=np.uint8),
        scale=scale,
        boxes=boxes,
        classes=classes,
        scores=rng.uniform(0, 1, n),
        lonlat=np.stack([rng.uniform(14, 16, n), rng.uniform(43, 44, n)], axis=1),
        bounds_lonlat=(14.0, 43.0, 16.0, 44.0),
    )


def _data(page: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="sw-data">(.*?)</script>', page, re.S)
    assert m is not None
    data: dict[str, Any] = json.loads(m.group(1))
    return data


@pytest.fixture
def page() -> str:
    return render_map_html([_layer(n=5), _layer("second", n=2, seed=1)], "Run 1", "resnet18-v1")


def _outside_scripts(page: str) -> str:
    """The page without the text of its inline scripts and CSS comments (Leaflet's code names web sites in
    strings and comments: text, never loaded; the browser test sees that nothing is)."""
    page = re.sub(r"/\*.*?\*/", "", page, flags=re.S)
    return re.sub(r"(<script[^>]*>).*?(</script>)", r"\1\2", page, flags=re.S)


def test_no_external_references(page: str) -> None:
    markup = _outside_scripts(page)
    assert "http://" not in markup
    assert "https://" not in markup
    assert not re.findall(r"""\b(?:src|href)\s*=""", markup)  # nothing to load: no link, no script src, no img
    assert "<link" not in markup
    assert "@import" not in page
    assert {u[:22] for u in re.findall(r"url\(([^)]{0,30})", page)} <= {"#default#VML", "data:image/png;base64,"}
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert csp and "default-src 'none'" in csp.group(1) and "img-src data:" in csp.group(1)  # nothing can be fetched
    assert all(s["quicklook"].startswith("data:image/png;base64,") for s in _data(page)["scenes"])


def test_leaflet_is_inline() -> None:
    from sitewatch.imagery.webmap import LEAFLET_VERSION, leaflet_css, leaflet_js, maplayers_js

    page = render_map_html([_layer(n=1)], "t", "m")
    assert leaflet_js() in page and maplayers_js() in page and leaflet_css() in page
    assert f"Leaflet {LEAFLET_VERSION}" in leaflet_js()
    assert "url(images/" not in page  # Leaflet's images are inline too


def test_corners_and_scene_size() -> None:
    layer = _layer(n=1, scale=4.0)
    s = _data(render_map_html([layer], "t", "m"))["scenes"][0]
    assert s["corners"] == [[14.0, 44.0], [16.0, 44.0], [16.0, 43.0], [14.0, 43.0]]  # from the bounds
    assert (s["scene_width"], s["scene_height"]) == (64 * 4.0, 40 * 4.0)
    turned = ((14.0, 44.1), (16.1, 44.0), (16.0, 42.9), (13.9, 43.0))
    layer = MapLayer(layer.scene, layer.image, 4.0, layer.boxes, layer.classes, layer.scores, layer.lonlat,
                     layer.bounds_lonlat, corners_lonlat=turned, scene_size=(255, 161))
    s = _data(render_map_html([layer], "t", "m"))["scenes"][0]
    assert s["corners"] == [list(c) for c in turned] and (s["scene_width"], s["scene_height"]) == (255, 161)
    with pytest.raises(UsageError, match="corners"):
        MapLayer("s", layer.image, 1.0, layer.boxes, layer.classes, layer.scores, layer.lonlat, layer.bounds_lonlat,
                 corners_lonlat=((0.0, 0.0),))


def test_density_is_embedded_when_there_are_cells() -> None:
    fc = {"type": "FeatureCollection", "cell_m": 1000.0, "grid_crs": "EPSG:32633", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[14, 43], [14.01, 43], [14.01, 43.01],
                                                                               [14, 43.01], [14, 43]]]},
         "properties": {"count": 3, "gi_z": 2.5, "gi_p": 0.01, "hotspot": "hot"}}]}
    assert _data(render_map_html([_layer(n=1)], "t", "m", fc))["density"] == fc
    assert _data(render_map_html([_layer(n=1)], "t", "m", {**fc, "features": []}))["density"] is None
    assert _data(render_map_html([_layer(n=1)], "t", "m"))["density"] is None


def test_escapes_text() -> None:
    layer = _layer(EVIL, n=2, cls=EVIL)
    page = render_map_html([layer], EVIL, EVIL)
    assert EVIL not in page
    assert "alert(1)" in page  # shown, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 4  # the data block, Leaflet, the shared layers and the page script only
    data = _data(page)
    assert data["scenes"][0]["name"] == EVIL
    assert data["classes"] == [EVIL]
    assert data["title"] == EVIL


def test_json_round_trip(page: str) -> None:
    layers = [_layer(n=5), _layer("second", n=2, seed=1)]
    data = _data(page)
    assert data["model"] == "resnet18-v1"
    assert data["classes"] == ["vessel", "kiln"]
    assert len(data["colours"]) == 2
    for layer, s in zip(layers, data["scenes"], strict=True):
        assert s["name"] == layer.scene
        assert (s["width"], s["height"]) == (64, 40)
        assert s["scale"] == layer.scale
        assert s["bounds"] == list(layer.bounds_lonlat)
        dets = np.array(s["dets"], dtype=float)
        assert [data["classes"][int(c)] for c in dets[:, 0]] == list(layer.classes)
        np.testing.assert_allclose(dets[:, 1], layer.scores, atol=1e-4)
        np.testing.assert_allclose(dets[:, 2:4], layer.lonlat, atol=1e-6)
        np.testing.assert_allclose(dets[:, 4:8], layer.boxes, atol=0.01)


def test_embedded_png_round_trips() -> None:
    layer = _layer(n=0)
    url = _data(render_map_html([layer], "t", "m"))["scenes"][0]["quicklook"]
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.removeprefix("data:image/png;base64,")))).convert("RGB"))
    assert (img == layer.image).all()


def test_legend_counts_and_controls(page: str) -> None:
    assert 'id="minscore"' in page and 'type="range"' in page
    assert 'id="scene"' in page and page.count("<option") == 3  # all scenes, and each
    assert 'id="zin"' in page and 'id="zout"' in page and 'id="zreset"' in page
    assert 'id="info"' in page
    # both scenes: 3 + 1 vessels and 2 + 1 kilns
    assert re.search(r'vessel <span class="n" data-c="0">4 / 4</span>', page)
    assert re.search(r'kiln <span class="n" data-c="1">3 / 3</span>', page)


def test_other_classes_and_nan_values() -> None:
    layer = MapLayer(
        "s",
        np.zeros((4, 4, 3), np.uint8),
        1.0,
        np.array([[0.0, 0.0, 1.0, 1.0]]),
        ("tank",),
        np.array([np.nan]),
        np.array([[np.nan, 1.0]]),
        (0.0, 0.0, 1.0, 1.0),
    )
    data = _data(render_map_html([layer], "t", "m"))
    assert data["classes"] == ["tank"]
    assert data["scenes"][0]["dets"][0][1:3] == [None, None]


def test_no_layers() -> None:
    page = render_map_html([], "empty run", "m")
    assert "No scenes to show." in page
    assert _data(page)["scenes"] == []


def test_layer_validates() -> None:
    good = _layer(n=2)
    with pytest.raises(UsageError):
        MapLayer("s", good.image, 1.0, good.boxes, ("vessel",), good.scores, good.lonlat, good.bounds_lonlat)
    with pytest.raises(UsageError):
        MapLayer("s", good.image[..., 0], 1.0, good.boxes, good.classes, good.scores, good.lonlat, good.bounds_lonlat)
    with pytest.raises(UsageError):
        MapLayer("s", good.image, 0.0, good.boxes, good.classes, good.scores, good.lonlat, good.bounds_lonlat)


def test_quicklook_uses_true_colour_bands() -> None:
    h, w = 8, 10
    ramp = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
    data = np.stack([ramp * 0, ramp, 1 - ramp, ramp * 0 + 0.5])  # B08, B04, B03, B02 below
    rgb = quicklook_rgb(data, ["B08", "B04", "B03", "B02"])
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255  # red follows B04
    assert rgb[0, 0, 1] == 255 and rgb[-1, -1, 1] == 0  # green follows B03
    assert (rgb[..., 2] == 0).all()  # blue: B02 is constant


def test_quicklook_stretch_clips_outliers() -> None:
    rng = np.random.default_rng(0)
    data = rng.uniform(0.2, 0.4, size=(3, 50, 50)).astype(np.float32)
    data[:, 0, 0] = 50.0  # a saturated pixel must not darken the rest
    rgb = quicklook_rgb(data, ["a", "b", "c"])
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert 100 < np.median(rgb) < 160


def test_quicklook_grey_and_invalid() -> None:
    data = np.linspace(0, 1, 100, dtype=np.float32).reshape(1, 10, 10)
    data[0, 0, 0] = np.nan
    valid = np.ones((10, 10), bool)
    valid[:, :2] = False
    rgb = quicklook_rgb(data, ["B08"], valid=valid)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[:, :2] == 0).all()
    assert rgb[-1, -1, 0] == 255
    assert not quicklook_rgb(np.zeros((2, 3, 3)), ["x", "y"], valid=np.zeros((3, 3), bool)).any()


def test_quicklook_rejects_bad_shapes() -> None:
    with pytest.raises(UsageError):
        quicklook_rgb(np.zeros((3, 4)), ["a", "b", "c"])
    with pytest.raises(UsageError):
        quicklook_rgb(np.zeros((3, 4, 4)), ["a", "b"])
