"""read_labels: GeoJSON, COCO and review exports to per-scene pixel boxes, and every problem reported."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from imagery.errors import InputError
from imagery.scene import Scene, open_scene
from training.labels import LabelError, LabelOptions, LabelProblem, LabelSet, problem_summary, read_labels

MakeGeoTiff = Callable[..., Path]
BANDS = ("B02", "B03", "B04", "B08")
CLASSES = ("vessel", "kiln")
#: 64 x 64 pixels of 10 m, upper-left corner at E 500000, N 4800000 in UTM 33N (lon 15, lat ~43.3).
UTM = Affine(10, 0, 500_000, 0, -10, 4_800_000)


def utm_scene(make_geotiff: MakeGeoTiff, name: str = "utm.tif", transform: Affine = UTM, size: int = 64) -> Scene:
    return open_scene(make_geotiff(size, size, crs="EPSG:32633", transform=transform, name=name), BANDS)


def lonlat_of(crs: str, x: float, y: float) -> list[float]:
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    return [float(lon), float(lat)]


def utm_px(col: float, row: float) -> list[float]:
    """Lon/lat of a pixel position of the UTM scene."""
    x, y = UTM @ (col, row)
    return lonlat_of("EPSG:32633", x, y)


def feature(geometry: dict[str, Any] | None, fid: Any = None, **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "Feature", "geometry": geometry, "properties": props}
    if fid is not None:
        out["id"] = fid
    return out


def point(x: float, y: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [x, y]}


def polygon(*ring: list[float]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


def collection(*features: dict[str, Any], crs: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": list(features)}
    if crs is not None:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    return doc


def write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def opts(**kw: Any) -> LabelOptions:
    kw.setdefault("classes", CLASSES)
    return LabelOptions(**kw)


def box_width(labels: LabelSet, scene: int = 0, k: int = 0) -> tuple[float, float]:
    x0, y0, x1, y1 = labels.scenes[scene].boxes[k]
    return float(x1 - x0), float(y1 - y0)


# A diamond (rotated square) with corners at pixels (15, 10), (20, 15), (15, 20), (10, 15) of
# the UTM scene: E = 500000 + 10 col, N = 4800000 - 10 row. Its pixel bbox is 10..20 by 10..20.
DIAMOND_UTM = [[500_150, 4_799_900], [500_200, 4_799_850], [500_150, 4_799_800], [500_100, 4_799_850]]


def diamond(to_lonlat: bool) -> dict[str, Any]:
    ring = [lonlat_of("EPSG:32633", x, y) if to_lonlat else [x, y] for x, y in DIAMOND_UTM]
    return polygon(*ring, ring[0])


# --- geometry and CRS ---------------------------------------------------------------------


def test_lonlat_polygon_gives_its_pixel_bbox(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    path = write(tmp_path, "l.geojson", collection(feature(diamond(True), **{"class": "Kiln"})))
    out = read_labels([path], [scene], opts())
    np.testing.assert_allclose(out.scenes[0].boxes, [[10, 10, 20, 20]], atol=1e-5)
    assert out.scenes[0].labels.tolist() == [1]
    assert out.scenes[0].labels.dtype == np.int64
    assert out.problems == []
    assert out.counts == {
        "features": 1, "positives": 1, "negatives": 0, "unused": 0, "problems": 0, "class:vessel": 0, "class:kiln": 1,
    }


@pytest.mark.parametrize("crs", ["EPSG:32633", "urn:ogc:def:crs:EPSG::32633"])
def test_legacy_crs_member_is_honoured(tmp_path: Path, make_geotiff: MakeGeoTiff, crs: str) -> None:
    scene = utm_scene(make_geotiff)
    path = write(tmp_path, "l.geojson", collection(feature(diamond(False), **{"class": "vessel"}), crs=crs))
    out = read_labels([path], [scene], opts())
    np.testing.assert_allclose(out.scenes[0].boxes, [[10, 10, 20, 20]], atol=1e-6)


def test_legacy_crs84_urn_is_lonlat(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    doc = collection(feature(diamond(True), **{"class": "vessel"}), crs="urn:ogc:def:crs:OGC:1.3:CRS84")
    out = read_labels([write(tmp_path, "l.geojson", doc)], [scene], opts())
    np.testing.assert_allclose(out.scenes[0].boxes, [[10, 10, 20, 20]], atol=1e-5)


def test_options_crs_overrides_file_and_default(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    # The file wrongly declares lon/lat; the option says the metres are UTM 33N.
    declared = write(tmp_path, "a.geojson", collection(feature(diamond(False), **{"class": "vessel"}), crs="EPSG:4326"))
    plain = write(tmp_path, "b.geojson", collection(feature(diamond(False), **{"class": "vessel"})))
    out = read_labels([declared, plain], [scene], opts(crs="EPSG:32633"))
    np.testing.assert_allclose(out.scenes[0].boxes, [[10, 10, 20, 20]] * 2, atol=1e-6)
    with pytest.raises(LabelError, match="crs"):
        read_labels([declared], [scene], opts())


def test_point_box_is_point_box_m_in_utm(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    path = write(tmp_path, "p.geojson", collection(feature(point(*utm_px(32.5, 30.5)), **{"class": "vessel"})))
    out = read_labels([path], [scene], opts())
    x0, y0, x1, y1 = out.scenes[0].boxes[0]
    assert (x0 + x1) / 2 == pytest.approx(32.5, abs=1e-6)
    assert (y0 + y1) / 2 == pytest.approx(30.5, abs=1e-6)
    # 50 m on 10 m pixels: 5 pixels (UTM scale and the spherical distance move it < 1 %).
    assert box_width(out) == pytest.approx((5.0, 5.0), rel=0.01)
    big = read_labels([path], [scene], opts(point_box_m=120))
    assert box_width(big) == pytest.approx((12.0, 12.0), rel=0.01)


def test_point_box_in_web_mercator_uses_ground_metres(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    # EPSG:3857 grid near lat 45: a 10 m Mercator pixel is only ~7.07 m on the ground.
    transform = Affine(10, 0, 1_669_792.0, 0, -10, 5_622_000.0)
    scene = open_scene(make_geotiff(64, 64, crs="EPSG:3857", transform=transform, name="merc.tif"), BANDS)
    x, y = transform @ (32, 32)
    lon, lat = lonlat_of("EPSG:3857", x, y)
    path = write(tmp_path, "p.geojson", collection(feature(point(lon, lat), **{"class": "vessel"})))
    out = read_labels([path], [scene], opts())
    expected = 50 / (10 * math.cos(math.radians(lat)))
    assert expected == pytest.approx(7.07, abs=0.05)
    assert box_width(out) == pytest.approx((expected, expected), rel=0.02)


def test_point_box_on_geographic_grid(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    # 0.0001 degree pixels at lat ~45: ~7.9 m wide, ~11.1 m tall.
    transform = Affine(0.0001, 0, 15.0, 0, -0.0001, 45.0)
    scene = open_scene(make_geotiff(64, 64, crs="EPSG:4326", transform=transform, name="geo.tif"), BANDS)
    path = write(tmp_path, "p.geojson", collection(feature(point(15.0032, 44.9968), **{"class": "vessel"})))
    out = read_labels([path], [scene], opts())
    deg = 6_371_008.8 * math.pi / 180 * 0.0001
    assert box_width(out) == pytest.approx((50 / (deg * math.cos(math.radians(44.9968))), 50 / deg), rel=0.01)


def test_single_feature_file_and_single_class_default(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    path = write(tmp_path, "one.geojson", feature(diamond(True)))
    out = read_labels([path], [scene], opts(classes=("kiln",)))
    assert out.scenes[0].labels.tolist() == [0]
    assert out.counts["class:kiln"] == 1


def test_class_property_option(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    path = write(tmp_path, "l.geojson", collection(feature(diamond(True), label="KILN", **{"class": "vessel"})))
    out = read_labels([path], [scene], opts(class_property="label"))
    assert out.scenes[0].labels.tolist() == [1]


def test_scene_without_labels_gets_empty_arrays(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    a = utm_scene(make_geotiff, "a.tif")
    far = utm_scene(make_geotiff, "far.tif", Affine(10, 0, 600_000, 0, -10, 4_800_000))
    path = write(tmp_path, "l.geojson", collection(feature(diamond(True), **{"class": "vessel"})))
    out = read_labels([path], [a, far], opts())
    assert [s.scene for s in out.scenes] == [a, far]
    assert out.scenes[0].boxes.shape == (1, 4)
    assert out.scenes[1].boxes.shape == (0, 4)
    assert out.scenes[1].labels.shape == (0,)
    assert out.scenes[1].negatives.shape == (0, 2)


def test_label_on_two_overlapping_scenes(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    a = utm_scene(make_geotiff, "a.tif")
    b = utm_scene(make_geotiff, "b.tif", Affine(10, 0, 500_320, 0, -10, 4_800_000))  # starts at column 32 of a
    shared = feature(point(*utm_px(40, 20)), **{"class": "vessel"})
    only_a = feature(point(*utm_px(10, 20)), **{"class": "kiln"})
    # A polygon reaching past the right edge of a (columns 60..65): its centre is in a and b.
    wide = [[500_600, 4_799_900], [500_650, 4_799_900], [500_650, 4_799_800], [500_600, 4_799_800]]
    wide_ll = [lonlat_of("EPSG:32633", x, y) for x, y in wide]
    path = write(
        tmp_path,
        "l.geojson",
        collection(shared, only_a, feature(polygon(*wide_ll, wide_ll[0]), **{"class": "vessel"})),
    )
    out = read_labels([path], [a, b], opts(point_box_m=20))
    ca = (out.scenes[0].boxes[:, :2] + out.scenes[0].boxes[:, 2:]) / 2
    cb = (out.scenes[1].boxes[:, :2] + out.scenes[1].boxes[:, 2:]) / 2
    np.testing.assert_allclose(ca[:2], [[40, 20], [10, 20]], atol=1e-6)
    np.testing.assert_allclose(cb[0], [8, 20], atol=1e-6)
    assert out.scenes[0].labels.tolist() == [0, 1, 0]
    assert out.scenes[1].labels.tolist() == [0, 0]
    # The wide box spans columns 60..65 of a: clipped to the raster's 64 columns there.
    np.testing.assert_allclose(out.scenes[0].boxes[2], [60, 10, 64, 20], atol=1e-5)
    np.testing.assert_allclose(out.scenes[1].boxes[1], [28, 10, 33, 20], atol=1e-5)
    assert out.counts["positives"] == 3  # a label counts once however many scenes it is on


# --- problems -------------------------------------------------------------------------------

GOOD_PX = (32.0, 32.0)


def _bad_features() -> list[tuple[str, dict[str, Any], str]]:
    good_ll = utm_px(*GOOD_PX)
    bowtie = [utm_px(10, 10), utm_px(20, 20), utm_px(20, 10), utm_px(10, 20)]
    open_ring = [utm_px(10, 10), utm_px(20, 10), utm_px(20, 20), utm_px(10, 20)]
    return [
        ("outside", feature(point(100.0, 10.0), **{"class": "vessel"}), "lies in none"),
        ("null-geometry", feature(None, **{"class": "vessel"}), "no geometry"),
        ("invalid-geometry", feature(polygon(*bowtie, bowtie[0]), **{"class": "vessel"}), "Self-intersection"),
        ("invalid-geometry", feature(polygon(*open_ring), **{"class": "vessel"}), "not closed"),
        ("invalid-geometry", feature(polygon(*bowtie[:2], bowtie[0]), **{"class": "vessel"}), "at least 4"),
        (
            "unsupported-geometry",
            feature({"type": "LineString", "coordinates": [good_ll, utm_px(5, 5)]}, **{"class": "vessel"}),
            "LineString",
        ),
        ("unknown-class", feature(point(*good_ll), **{"class": "ship"}), "'ship'"),
        ("missing-class", feature(point(*good_ll)), "'class'"),
        ("crs-mismatch", feature(point(500_320.0, 4_799_680.0), **{"class": "vessel"}), "projected"),
        ("swapped-coordinates", feature(point(good_ll[1], good_ll[0]), **{"class": "vessel"}), "lat,lon"),
        ("invalid-status", feature(point(*good_ll), status="maybe", **{"class": "vessel"}), "'maybe'"),
    ]


@pytest.mark.parametrize(("kind", "bad", "detail"), _bad_features(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_problem_kind_is_reported(
    tmp_path: Path, make_geotiff: MakeGeoTiff, kind: str, bad: dict[str, Any], detail: str
) -> None:
    scene = utm_scene(make_geotiff)
    good = feature(point(*utm_px(*GOOD_PX)), **{"class": "vessel"})
    path = write(tmp_path, "labels.geojson", collection(good, bad))
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts())
    message = str(err.value)
    assert message.startswith(f"{path}: 1 ")
    assert "feature 2" in message and "--skip-bad-labels" in message
    assert "\n" not in message
    assert err.value.path == str(path)
    assert err.value.exit_code == 3

    out = read_labels([path], [scene], opts(skip_problems=True))
    assert [(p.kind, p.item, p.source) for p in out.problems] == [(kind, "feature 2", str(path))]
    assert detail in out.problems[0].detail
    assert out.scenes[0].boxes.shape == (1, 4)  # the good label is kept
    assert out.counts["features"] == 2 and out.counts["problems"] == 1 and out.counts["positives"] == 1


def test_feature_id_names_the_item(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    path = write(tmp_path, "l.geojson", collection(feature(None, fid="k-7", **{"class": "vessel"})))
    out = read_labels([path], [scene], opts(skip_problems=True))
    assert out.problems == [LabelProblem("null-geometry", str(path), "feature id=k-7", "feature has no geometry")]


def test_skip_problems_keeps_good_labels_and_summary_groups(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    feats = [feature(point(*utm_px(10 + 5 * k, 20)), **{"class": "vessel"}) for k in range(3)]
    feats += [feature(point(100.0 + k, 10.0), **{"class": "vessel"}) for k in range(5)]
    feats.append(feature(point(*utm_px(5, 5)), **{"class": "ship"}))
    path = write(tmp_path, "labels.geojson", collection(*feats))
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts())
    assert str(err.value) == (
        f"{path}: 5 labels outside every image (feature 4, feature 5, feature 6, and 2 more); "
        "1 label of an unknown class (feature 9: class 'ship' (known: vessel, kiln)); "
        "fix them, or pass --skip-bad-labels to train without them"
    )
    out = read_labels([path], [scene], opts(skip_problems=True))
    centres = (out.scenes[0].boxes[:, :2] + out.scenes[0].boxes[:, 2:]) / 2
    np.testing.assert_allclose(centres, [[10, 20], [15, 20], [20, 20]], atol=1e-6)
    assert [p.kind for p in out.problems] == ["outside"] * 5 + ["unknown-class"]
    assert out.counts["problems"] == 6 and out.counts["positives"] == 3 and out.counts["features"] == 9
    assert problem_summary(out.problems, limit=1).startswith("5 labels outside every image (feature 4, and 4 more)")


def test_problem_summary_names_files_when_several() -> None:
    problems = [
        LabelProblem("null-geometry", "/d/a.geojson", "feature 1"),
        LabelProblem("null-geometry", "/d/b.geojson", "feature 1"),
        LabelProblem("unmatched-image", "/d/c.json", "image x.tif", "no scene of that name (scenes: p)"),
        LabelProblem("unmatched-image", "/d/c.json", "image x.tif", "no scene of that name (scenes: p)"),
    ]
    text = problem_summary(problems)
    assert text.startswith("2 labels with no geometry (a.geojson feature 1, b.geojson feature 1); ")
    # Two annotations of one unmatched image: counted twice, shown once.
    assert "2 labels on COCO images that match no scene (c.json image x.tif: no scene of that name (scenes: p))" in text
    assert problem_summary([]) == "no label problems"


def test_invalid_geometry_checks_raw_rings_and_multipolygons(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    sq = [utm_px(10, 10), utm_px(20, 10), utm_px(20, 20), utm_px(10, 20), utm_px(10, 10)]
    overlapping = {"type": "MultiPolygon", "coordinates": [[sq], [sq]]}
    text_coords = {"type": "Polygon", "coordinates": [[["a", "b"], [1, 2], [3, 4], ["a", "b"]]]}
    good_multi = {"type": "MultiPolygon", "coordinates": [[sq], [[utm_px(30, 30), utm_px(40, 30), utm_px(40, 40),
                                                                   utm_px(30, 30)]]]}
    path = write(tmp_path, "l.geojson", collection(*(feature(g, **{"class": "vessel"})
                                                       for g in (overlapping, text_coords, good_multi))))
    out = read_labels([path], [scene], opts(skip_problems=True))
    assert [(p.kind, p.item) for p in out.problems] == [("invalid-geometry", "feature 1"),
                                                        ("invalid-geometry", "feature 2")]
    assert "position" in out.problems[1].detail
    np.testing.assert_allclose(out.scenes[0].boxes, [[10, 10, 40, 40]], atol=1e-5)  # one box for a MultiPolygon


def test_review_export_statuses(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    feats = [
        feature(point(*utm_px(10, 10)), status="confirmed", **{"class": "kiln"}),
        feature(point(*utm_px(30, 40)), status="Rejected"),  # no class needed for a negative
        feature(polygon(*diamond(True)["coordinates"][0]), status="rejected", **{"class": "kiln"}),
        feature(point(*utm_px(50, 50)), status="unsure", **{"class": "kiln"}),
        feature(None, status="unreviewed"),  # unused: not even its geometry matters
        feature(point(*utm_px(20, 20)), **{"class": "vessel"}),  # no status: an ordinary positive
    ]
    path = write(tmp_path, "review.geojson", collection(*feats))
    out = read_labels([path], [scene], opts())
    assert out.scenes[0].labels.tolist() == [1, 0]
    np.testing.assert_allclose(out.scenes[0].negatives, [[30, 40], [15, 15]], atol=1e-5)
    assert out.counts == {
        "features": 6, "positives": 2, "negatives": 2, "unused": 2, "problems": 0, "class:vessel": 1, "class:kiln": 1,
    }


# --- COCO -----------------------------------------------------------------------------------


def coco(images: list[tuple[int, str, int, int]], anns: list[tuple[int, int, int, list[float]]]) -> dict[str, Any]:
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": [{"id": a, "image_id": i, "category_id": c, "bbox": b} for a, i, c, b in anns],
        "categories": [{"id": 1, "name": "vessel"}, {"id": 2, "name": "Kiln"}, {"id": 3, "name": "ship"}],
    }


def test_coco_bound_by_stem(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    other = utm_scene(make_geotiff, "other.tif")
    port = utm_scene(make_geotiff, "port.tif")
    doc = coco([(1, "images/port.png", 64, 64)], [(7, 1, 1, [10, 12, 5, 6]), (8, 1, 2, [60, 61, 10, 10])])
    out = read_labels([write(tmp_path, "c.json", doc)], [other, port], opts())
    assert out.scenes[0].boxes.shape == (0, 4)
    np.testing.assert_allclose(out.scenes[1].boxes, [[10, 12, 15, 18], [60, 61, 64, 64]])  # second one clipped
    assert out.scenes[1].labels.tolist() == [0, 1]
    assert out.counts["features"] == 2 and out.counts["class:kiln"] == 1


def test_coco_bound_by_prefix_to_band_directory(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    (tmp_path / "algiers").mkdir()
    for band in BANDS:
        make_geotiff(64, 64, bands=1, transform=UTM, name=f"algiers/{band}.tif")
    algiers = open_scene(tmp_path / "algiers", BANDS)
    port = utm_scene(make_geotiff, "port.tif")
    doc = coco([(1, "algiers_rgb.tiff", 64, 64), (2, "port-2020.tif", 64, 64)],
               [(1, 1, 1, [1, 2, 3, 4]), (2, 2, 1, [5, 6, 7, 8])])
    out = read_labels([write(tmp_path, "c.json", doc)], [port, algiers], opts())
    np.testing.assert_allclose(out.scenes[1].boxes, [[1, 2, 4, 6]])
    np.testing.assert_allclose(out.scenes[0].boxes, [[5, 6, 12, 14]])


def test_coco_bind_option(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff, "s2_tile.tif")
    doc = coco([(1, "frame_0001.jpg", 64, 64)], [(3, 1, 1, [1, 2, 3, 4])])
    path = write(tmp_path, "c.json", doc)
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts())
    assert str(err.value).startswith(f"{path}: 1 label on a COCO image that matches no scene (image frame_0001.jpg")
    out = read_labels([path], [scene], opts(coco_bind=(("frame_0001.jpg", scene.source),)))
    np.testing.assert_allclose(out.scenes[0].boxes, [[1, 2, 4, 6]])


def test_coco_problems(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    port = utm_scene(make_geotiff, "port.tif")
    algiers = utm_scene(make_geotiff, "algiers.tif")
    doc = coco(
        [(1, "port.png", 64, 64), (2, "elsewhere.tif", 64, 64), (3, "algiers.tif", 100, 64)],
        [
            (10, 1, 1, [10, 10, 4, 4]),  # good
            (11, 1, 1, [70, 5, 5, 5]),  # right of the raster
            (12, 1, 1, [5, 5, 0, 4]),  # no width
            (13, 1, 3, [5, 5, 4, 4]),  # class ship
            (14, 2, 1, [5, 5, 4, 4]),  # image matches no scene
            (15, 2, 2, [6, 6, 4, 4]),
            (16, 3, 1, [5, 5, 4, 4]),  # image 100 wide, scene 64
        ],
    )
    path = write(tmp_path, "coco.json", doc)
    with pytest.raises(LabelError) as err:
        read_labels([path], [port, algiers], opts())
    assert str(err.value).startswith(f"{path}: ")
    assert "2 labels on COCO images that match no scene (image elsewhere.tif: no scene of that name" in str(err.value)
    out = read_labels([path], [port, algiers], opts(skip_problems=True))
    assert [(p.kind, p.item) for p in out.problems] == [
        ("outside", "annotation 11"),
        ("invalid-geometry", "annotation 12"),
        ("unknown-class", "annotation 13"),
        ("unmatched-image", "image elsewhere.tif"),
        ("unmatched-image", "image elsewhere.tif"),
        ("size-mismatch", "image algiers.tif"),
    ]
    assert "100x64" in out.problems[-1].detail and "64x64" in out.problems[-1].detail
    np.testing.assert_allclose(out.scenes[0].boxes, [[10, 10, 14, 14]])
    assert out.scenes[1].boxes.shape == (0, 4)
    assert out.counts["features"] == 7 and out.counts["problems"] == 6


def test_coco_image_matching_two_scenes_is_unmatched(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = utm_scene(make_geotiff, "a/port.tif")
    two = utm_scene(make_geotiff, "b/port.tif")
    path = write(tmp_path, "c.json", coco([(1, "port.tif", 64, 64)], [(1, 1, 1, [1, 1, 2, 2])]))
    out = read_labels([path], [one, two], opts(skip_problems=True))
    assert [p.kind for p in out.problems] == ["unmatched-image"]
    assert "several scenes" in out.problems[0].detail


# --- files that are not labels --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.geojson", "this is not json", "not JSON"),
        ("table.csv", "x,y\n1,2\n", "not JSON"),
        ("other.json", {"foo": 1}, "neither GeoJSON"),
        ("geom.geojson", {"type": "Polygon", "coordinates": []}, "type 'Polygon'"),
        ("list.json", [1, 2], "neither GeoJSON"),
        ("empty.geojson", {"type": "FeatureCollection", "features": []}, "has no features"),
        ("badcoco.json", {"images": [{"id": 1}], "annotations": []}, "not a COCO"),
        ("badcrs.geojson", collection(feature(None), crs="EPSG:999999"), "does not understand"),
    ],
)
def test_unreadable_files_stop_at_once(
    tmp_path: Path, make_geotiff: MakeGeoTiff, name: str, content: Any, reason: str
) -> None:
    scene = utm_scene(make_geotiff)
    path = write(tmp_path, name, content)
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts(skip_problems=True))
    assert str(err.value).startswith(f"{path}: ")
    assert reason in str(err.value)
    assert isinstance(err.value, InputError)


def test_missing_file(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    with pytest.raises(LabelError, match="no such label file"):
        read_labels([tmp_path / "nope.geojson"], [scene], opts())
