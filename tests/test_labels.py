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

from sitewatch.imagery.errors import InputError, UsageError
from sitewatch.imagery.scenes.scene import Scene, open_scene
from sitewatch.training.labels import LabelError, LabelOptions, LabelProblem, LabelSet, problem_summary, read_labels

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
    """Write ``doc`` as JSON (NaN and Infinity as Python's json writes them), or text/bytes as they are."""
    path = tmp_path / name
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
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


def utm_extent() -> str:
    """The lon/lat box of the UTM scene as messages write it."""
    corners = [utm_px(c, r) for c in (0, 64) for r in (0, 64)]
    lons, lats = [c[0] for c in corners], [c[1] for c in corners]
    return f"lon {min(lons):.5f}..{max(lons):.5f}, lat {min(lats):.5f}..{max(lats):.5f}"


SWAPPED = "coordinates look like lat, lon; GeoJSON is lon, lat"


def _bad_features() -> list[tuple[str, str, dict[str, Any], str, str]]:
    """``(test id, problem kind, bad feature, text of its detail, text of the one-line error)``."""
    good_ll = utm_px(*GOOD_PX)
    bowtie = [utm_px(10, 10), utm_px(20, 20), utm_px(20, 10), utm_px(10, 20)]
    open_ring = [utm_px(10, 10), utm_px(20, 10), utm_px(20, 20), utm_px(10, 20)]
    square = [utm_px(10, 10), utm_px(20, 10), utm_px(20, 20), utm_px(10, 20), utm_px(10, 10)]
    with_inf = [*square[:2], [math.inf, square[2][1]], *square[3:]]
    vessel = {"class": "vessel"}
    return [
        ("outside", "outside", feature(point(100.0, 10.0), **vessel), "lies in none",
         f"1 label outside every image (feature 2): the 1 scene covers {utm_extent()}"),
        ("null-geometry", "null-geometry", feature(None, **vessel), "no geometry", "1 label with no geometry"),
        ("bowtie", "invalid-geometry", feature(polygon(*bowtie, bowtie[0]), **vessel), "Self-intersection",
         "1 invalid geometry (feature 2: Self-intersection"),
        ("unclosed-ring", "invalid-geometry", feature(polygon(*open_ring), **vessel), "not closed",
         "ring 1 is not closed"),
        ("ring-of-3", "invalid-geometry", feature(polygon(*bowtie[:2], bowtie[0]), **vessel), "at least 4",
         "ring 1 has 3 positions; a ring needs at least 4"),
        ("nan-point", "invalid-geometry", feature(point(math.nan, 43.3), **vessel), "not finite",
         "point is not finite"),
        ("infinity-ring", "invalid-geometry", feature(polygon(*with_inf), **vessel), "not finite",
         "ring 1 position 3 is not finite"),
        ("huge-integer", "invalid-geometry", feature(point(10**400, 43), **vessel), "not finite",
         "point is not finite"),
        ("text-coordinates", "invalid-geometry", feature(point("15", "43"), **vessel), "not a position",  # type: ignore[arg-type]
         "point is not a position [x, y]"),
        (
            "linestring",
            "unsupported-geometry",
            feature({"type": "LineString", "coordinates": [good_ll, utm_px(5, 5)]}, **vessel),
            "LineString",
            "1 label of an unsupported geometry type (feature 2: LineString): use Polygon or Point",
        ),
        ("unknown-class", "unknown-class", feature(point(*good_ll), **{"class": "ship"}), "'ship'",
         "1 label of an unknown class (feature 2: class 'ship' (known: vessel, kiln))"),
        ("class-not-text", "unknown-class", feature(point(*good_ll), **{"class": {"name": "vessel"}}),
         "not a class name", "'class' is a JSON object, not a class name (known: vessel, kiln)"),
        ("missing-class", "missing-class", feature(point(*good_ll)), "'class'", "1 label with no class"),
        ("utm-metres", "crs-mismatch", feature(point(500_320.0, 4_799_680.0), **vessel), "projected metres",
         "they look like projected metres, not lon/lat: declare their CRS in the file "
         '("crs": {"type": "name", "properties": {"name": "EPSG:32633"}}) or pass --labels-crs EPSG:32633'),
        ("swapped-by-place", "swapped-coordinates", feature(point(good_ll[1], good_ll[0]), **vessel), SWAPPED,
         f"1 label with swapped coordinates (feature 2): {SWAPPED}"),
        ("swapped-by-range", "swapped-coordinates", feature(point(30.0, 120.0), **vessel), SWAPPED,
         f"1 label with swapped coordinates (feature 2): {SWAPPED}"),
        ("lon-beyond-180", "out-of-range", feature(point(200.0, 10.0), **vessel), "coordinates like 200, 10",
         "1 label with coordinates outside the lon/lat range (feature 2: coordinates like 200, 10): "
         "longitude must be within -180..180 and latitude within -90..90"),
        ("lat-beyond-90", "out-of-range", feature(point(100.0, -95.0), **vessel), "coordinates like 100, -95",
         "outside the lon/lat range (feature 2: coordinates like 100, -95)"),
        ("invalid-status", "invalid-status", feature(point(*good_ll), status="maybe", **vessel), "'maybe'",
         "1 label with an unknown review status (feature 2: status 'maybe'): use confirmed, rejected"),
    ]


@pytest.mark.parametrize(
    ("kind", "bad", "detail", "expect"),
    [pytest.param(*case[1:], id=case[0]) for case in _bad_features()],
)
def test_each_problem_kind_is_reported(
    tmp_path: Path, make_geotiff: MakeGeoTiff, kind: str, bad: dict[str, Any], detail: str, expect: str
) -> None:
    scene = utm_scene(make_geotiff)
    good = feature(point(*utm_px(*GOOD_PX)), **{"class": "vessel"})
    path = write(tmp_path, "labels.geojson", collection(good, bad))
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts())
    message = str(err.value)
    assert message.startswith(f"{path}: 1 ")
    assert "feature 2" in message and "--skip-bad-labels" in message
    assert expect in message
    assert "\n" not in message
    assert err.value.path == str(path)
    assert err.value.exit_code == 3

    out = read_labels([path], [scene], opts(skip_problems=True))
    assert [(p.kind, p.item, p.source) for p in out.problems] == [(kind, "feature 2", str(path))]
    assert detail in out.problems[0].detail
    assert out.scenes[0].boxes.shape == (1, 4)  # the good label is kept
    assert out.counts["features"] == 2 and out.counts["problems"] == 1 and out.counts["positives"] == 1


@pytest.mark.filterwarnings("error")
def test_huge_coordinates_are_reported_without_warnings(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    # Found by scripts/fuzz_parsers.py: shapely warned about overflow (the CLI would print the warning).
    scene = utm_scene(make_geotiff)
    ring = [[15.0, 0.0], [0.0, 15.006], [15.006, 3.4e153], [15.0, 3.4e153], [15.0, 0.0]]
    path = write(tmp_path, "huge.geojson", collection(feature(polygon(*ring), **{"class": "vessel"})))
    out = read_labels([path], [scene], opts(skip_problems=True))
    assert [p.kind for p in out.problems] == ["invalid-geometry"]
    assert out.problems[0].detail.startswith("Self-intersection")


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
        f"{path}: 5 labels outside every image (feature 4, feature 5, feature 6, and 2 more): "
        f"the 1 scene covers {utm_extent()}; "
        "1 label of an unknown class (feature 9: class 'ship' (known: vessel, kiln)): "
        "map label classes to the model's with --class-map ship=vessel (config labels.class_map); "
        "fix them, or pass --skip-bad-labels to go on without them"
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


def test_coco_bound_to_a_band_directory_whose_name_has_an_underscore(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    """``los_angeles_rgb.tiff`` is the ``los_angeles`` directory (sen2ships-partial names it so),
    not a scene called ``los``."""
    (tmp_path / "los_angeles").mkdir()
    for band in BANDS:
        make_geotiff(64, 64, bands=1, transform=UTM, name=f"los_angeles/{band}.tif")
    la = open_scene(tmp_path / "los_angeles", BANDS)
    doc = coco([(1, "los_angeles_rgb.tiff", 64, 64)], [(1, 1, 1, [1, 2, 3, 4])])
    out = read_labels([write(tmp_path, "c.json", doc)], [la], opts())
    np.testing.assert_allclose(out.scenes[0].boxes, [[1, 2, 4, 6]])


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


def _coco_doc(**changes: Any) -> dict[str, Any]:
    """A one-box COCO document with some top-level members replaced."""
    doc = {
        "images": [{"id": 1, "file_name": "utm.tif", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
        "categories": [{"id": 1, "name": "vessel"}],
    }
    doc.update(changes)
    return doc


GOOD_FEATURE = feature(point(15.004, 43.35), **{"class": "vessel"})

UNREADABLE_FILES = [
    # not JSON at all
    ("notes.geojson", "this is not json", "not JSON (Expecting value at line 1 column 1); labels must be GeoJSON"),
    ("table.csv", "x,y\n1,2\n", "not JSON"),
    ("empty-file.geojson", "", "not JSON (Expecting value at line 1 column 1)"),
    ("truncated.geojson", '{"type": "FeatureCollection", "features": [', "not JSON (Expecting value at line 1"),
    ("latin1.geojson", '{"name": "S\u00e3o Paulo"}'.encode("latin-1"), "not JSON (not UTF-8 text)"),
    ("deep.geojson", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),
    ("digits.geojson", '{"type": "Feature", "coordinates": [' + "1" * 5000 + "]}", "JSON that cannot be read"),
    # JSON, but neither GeoJSON nor COCO
    ("other.json", {"foo": 1}, "neither GeoJSON (a FeatureCollection or Feature) nor COCO"),
    ("no-type.geojson", {"features": [GOOD_FEATURE]}, "it is an object with no 'type'; export the labels as GeoJSON"),
    ("foo.geojson", {"type": "Foo", "features": [GOOD_FEATURE]}, "it is an object of type 'Foo'"),
    ("geom.geojson", {"type": "Polygon", "coordinates": []}, "type 'Polygon'"),
    ("list.json", [1, 2], "it is a JSON list"),
    ("string.json", '"labels"', "it is a JSON str"),
    ("nan.json", "NaN", "it is a JSON float"),
    ("null.json", "null", "it is a JSON NoneType"),
    # GeoJSON with nothing to train on, or no way to place it
    ("empty.geojson", {"type": "FeatureCollection", "features": []}, "has no features; label some objects or leave"),
    ("features-null.geojson", {"type": "FeatureCollection", "features": None}, "has no 'features' list"),
    ("features-dict.geojson", {"type": "FeatureCollection", "features": {"a": 1}}, "has no 'features' list"),
    ("badcrs.geojson", collection(feature(None), crs="EPSG:999999"), "which pyproj does not understand"),
    ("vertical-crs.geojson", collection(GOOD_FEATURE, crs="EPSG:5703"), "a Vertical CRS, not a geographic or projected"),
    ("crs-text.geojson", {**collection(GOOD_FEATURE), "crs": "EPSG:4326"}, "has a 'crs' member sitewatch cannot read"),
    # COCO that is not COCO detection JSON
    ("badcoco.json", {"images": [{"id": 1}], "annotations": []}, "not a COCO"),
    ("coco-no-categories.json", {"images": [], "annotations": []}, "not a COCO detection file (no 'categories' list)"),
    ("coco-name.json", _coco_doc(categories=[{"id": 1, "name": 5}]), "category 1 has no 'name' text"),
    ("coco-image-id.json", _coco_doc(images=[{"id": 2, "file_name": "utm.tif", "width": 64, "height": 64}]),
     "annotation 1 has image_id 1, which no image has"),
    ("coco-bbox.json", _coco_doc(annotations=[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]),
     "annotation 1 has no 'bbox' of four numbers"),
    ("coco-bbox-text.json", _coco_doc(annotations=[{"image_id": 1, "category_id": 1, "bbox": "1234"}]),
     "annotation 1 has no 'bbox' of four numbers"),
    ("coco-width.json", _coco_doc(images=[{"id": 1, "file_name": "utm.tif", "width": -64, "height": 64}]),
     "image 1 has no 'width' (a positive number of pixels)"),
    ("coco-file-name.json", _coco_doc(images=[{"id": 1, "file_name": 7, "width": 64, "height": 64}]),
     "image 1 has no 'file_name' text"),
]


@pytest.mark.parametrize(("name", "content", "reason"), UNREADABLE_FILES, ids=[c[0] for c in UNREADABLE_FILES])
def test_unreadable_files_stop_at_once(
    tmp_path: Path, make_geotiff: MakeGeoTiff, name: str, content: Any, reason: str
) -> None:
    scene = utm_scene(make_geotiff, "utm.tif")
    path = write(tmp_path, name, content)
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts(skip_problems=True))
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert reason in message
    assert "\n" not in message and len(message) < len(str(path)) + 400
    assert isinstance(err.value, InputError) and err.value.exit_code == 3


def test_label_file_entirely_off_the_scenes_names_both_extents(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    feats = [feature(point(100.0, 10.0), **{"class": "vessel"}), feature(point(101.0, 11.5), **{"class": "kiln"})]
    path = write(tmp_path, "elsewhere.geojson", collection(*feats))
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts())
    assert str(err.value) == (
        f"{path}: all 2 of its labels lie outside every image: the labels span lon 100.00000..101.00000, "
        f"lat 10.00000..11.50000, the 1 scene covers {utm_extent()}; check that the file belongs to these images "
        "and that its coordinates are lon/lat (or its CRS is declared), or leave it out"
    )
    assert err.value.exit_code == 3
    # Told to skip bad labels, they are listed one by one like any other problem.
    out = read_labels([path], [scene], opts(skip_problems=True))
    assert [(p.kind, p.item) for p in out.problems] == [("outside", "feature 1"), ("outside", "feature 2")]
    assert out.counts["positives"] == 0


def test_one_label_file_off_the_scenes_in_a_declared_crs(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    # UTM 33N metres 100 km east of the scene: the span is still given in lon/lat.
    path = write(tmp_path, "east.geojson", collection(feature(point(600_320.0, 4_799_680.0)), crs="EPSG:32633"))
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts(classes=("kiln",)))
    lon, lat = lonlat_of("EPSG:32633", 600_320.0, 4_799_680.0)
    assert str(err.value).startswith(
        f"{path}: its label lies outside every image: the label spans lon {lon:.5f}..{lon:.5f}, lat {lat:.5f}..{lat:.5f}, "
        f"the 1 scene covers {utm_extent()}; "
    )


def test_hostile_ids_classes_and_names_stay_on_one_line(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    good_ll = utm_px(*GOOD_PX)
    feats = [
        feature(point(*good_ll), fid="k\n7", **{"class": "vessel"}),
        feature(None, fid="x" * 500, **{"class": "vessel"}),
        feature(point(*good_ll), fid=[1, 2], **{"class": "ship\r\nboat" + "!" * 300}),
        feature({"type": "Line\nString", "coordinates": []}, **{"class": "vessel"}),
        feature(point(*good_ll), status=["confirmed"] * 100, **{"class": "vessel"}),
    ]
    path = write(tmp_path, "hostile.geojson", collection(*feats))
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts())
    message = str(err.value)
    assert "\n" not in message and "\r" not in message and len(message) < len(str(path)) + 700
    out = read_labels([path], [scene], opts(skip_problems=True))
    assert [(p.kind, p.item) for p in out.problems] == [
        ("null-geometry", "feature id=" + "x" * 37 + "..."),
        ("unknown-class", "feature 3"),
        ("unsupported-geometry", "feature 4"),
        ("invalid-status", "feature 5"),
    ]
    assert out.problems[1].detail.startswith("class 'ship\\r\\nboat!!!")
    assert out.problems[2].detail == "Line String"
    assert out.problems[3].detail == "status a JSON array"
    assert out.counts["positives"] == 1  # the feature whose id holds a newline is fine


def test_hostile_coco_ids_and_names_stay_on_one_line(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff, "utm.tif")
    doc = _coco_doc(
        images=[{"id": 1, "file_name": "utm.tif", "width": 64, "height": 64},
                {"id": "two\nlines", "file_name": "no\nscene.png", "width": 64, "height": 64}],
        annotations=[{"id": "a\nb", "image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4]},
                     {"id": 9, "image_id": "two\nlines", "category_id": 1, "bbox": [1, 2, 3, 4]}],
        categories=[{"id": 1, "name": "vessel"}, {"id": 2, "name": "tanker\r\n"}],
    )
    path = write(tmp_path, "coco.json", doc)
    with pytest.raises(LabelError) as err:
        read_labels([path], [scene], opts())
    assert "\n" not in str(err.value) and "\r" not in str(err.value)
    out = read_labels([path], [scene], opts(skip_problems=True))
    assert [(p.kind, p.item) for p in out.problems] == [("unknown-class", "annotation a b"),
                                                        ("unmatched-image", "image no scene.png")]
    assert out.problems[0].detail == "class 'tanker\\r\\n' (known: vessel, kiln)"
    dup = write(tmp_path, "dup.json", _coco_doc(images=[{"id": "x" * 100, "file_name": "utm.tif", "width": 64,
                                                         "height": 64}] * 2))
    with pytest.raises(LabelError, match=r"image id 'x{36}\.\.\. appears twice"):
        read_labels([dup], [scene], opts())


def test_second_file_off_the_scenes_is_named(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    good = write(tmp_path, "good.geojson", collection(feature(point(*utm_px(10, 10)), **{"class": "kiln"})))
    far = write(tmp_path, "far.geojson", collection(feature(point(100.0, 10.0), **{"class": "kiln"})))
    with pytest.raises(LabelError) as err:
        read_labels([good, far], [scene], opts())
    assert str(err.value).startswith(f"{far}: its label lies outside every image: the label spans lon 100.00000..")
    out = read_labels([good, far], [scene], opts(skip_problems=True))
    assert [(Path(p.source).name, p.kind) for p in out.problems] == [("far.geojson", "outside")]
    assert out.counts["positives"] == 1


@pytest.mark.parametrize(
    ("crs", "reason"),
    [("EPSG:999999", "not a CRS pyproj understands"), ("EPSG:5703", "a Vertical CRS, not a geographic or projected CRS"),
     ("IAU_2015:30100", "pyproj cannot transform it to lon/lat")],
    ids=["unknown", "vertical", "moon"],
)
def test_unusable_labels_crs_option_is_a_usage_error(
    tmp_path: Path, make_geotiff: MakeGeoTiff, crs: str, reason: str
) -> None:
    scene = utm_scene(make_geotiff)
    path = write(tmp_path, "l.geojson", collection(GOOD_FEATURE))
    with pytest.raises(UsageError) as err:
        read_labels([path], [scene], opts(crs=crs))
    assert str(err.value) == f"labels.crs / --labels-crs {crs!r}: {reason}; use e.g. 'EPSG:32643'"
    assert err.value.exit_code == 2


# --- through the CLI: one line, the exit code, nothing written -----------------------------------

CLI_CONFIG = "model:\n  name: m\n  classes: [vessel, kiln]\n  bands: [B02, B03, B04, B08]\n  pixel_size_m: 10\n"

CLI_CASES = [
    ("not-json", "{oops", "not JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ("not-geojson", {"type": "Foo"}, "it is an object of type 'Foo'"),
    ("empty", collection(), "GeoJSON FeatureCollection has no features"),
    ("null-geometry", collection(GOOD_FEATURE, feature(None, fid=7, **{"class": "vessel"})),
     "1 label with no geometry (feature id=7)"),
    ("nan", '{"type": "Feature", "properties": {"class": "vessel"}, "geometry": {"type": "Point", '
            '"coordinates": [NaN, Infinity]}}', "1 invalid geometry (feature 1: point is not finite"),
    ("swapped", collection(feature(point(43.35, 15.004), **{"class": "vessel"})), SWAPPED),
    ("projected", collection(feature(point(500_320.0, 4_799_680.0), **{"class": "vessel"})),
     "--labels-crs EPSG:32633"),
    ("unknown-class", collection(feature(point(15.004, 43.35), **{"class": "tanker"})),
     "class 'tanker' (known: vessel, kiln)"),
    ("outside", collection(feature(point(100.0, 10.0), **{"class": "vessel"})), "its label lies outside every image"),
]


@pytest.mark.parametrize(("content", "expect"), [pytest.param(*c[1:], id=c[0]) for c in CLI_CASES])
def test_cli_train_bad_labels_one_line_exit_3_nothing_written(
    tmp_path: Path, make_geotiff: MakeGeoTiff, capsys: pytest.CaptureFixture[str], content: Any, expect: str
) -> None:
    from sitewatch.cli import main

    image = make_geotiff(64, 64, crs="EPSG:32633", transform=UTM, name="utm.tif")
    config = tmp_path / "c.yaml"
    config.write_text(CLI_CONFIG)
    labels = write(tmp_path, "labels.geojson", content)
    out = tmp_path / "model"
    with pytest.raises(SystemExit) as ex:
        main(["train", "--config", str(config), "--images", str(image), "--labels", str(labels), "--out", str(out)])
    err = capsys.readouterr().err
    assert ex.value.code == 3
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(labels) in err and expect in err
    assert not out.exists()


def test_missing_file(tmp_path: Path, make_geotiff: MakeGeoTiff) -> None:
    scene = utm_scene(make_geotiff)
    with pytest.raises(LabelError, match="no such label file"):
        read_labels([tmp_path / "nope.geojson"], [scene], opts())
