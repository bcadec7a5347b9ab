"""Tests for sitewatch.imagery.scenes.georef: pixel <-> map <-> lon/lat round trips, ring orientation, distances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod
from rasterio.crs import CRS

from sitewatch.imagery.detect.report import ccw_rings
from sitewatch.imagery.scenes.georef import (
    box_corners,
    from_lonlat,
    ground_distance_m,
    map_to_pixel,
    pixel_to_map,
    to_lonlat,
)

#: Round-trip tolerance in pixels. pyproj's forward and inverse projections agree to
#: nanometres, and float64 affine arithmetic on coordinates of ~1e7 m loses ~1e-8 m, so a
#: millionth of a pixel (1e-5 m at 10 m pixels, 3e-7 m at 0.3 m pixels) is ample and still
#: catches any real error (a swapped axis or a wrong CRS moves points by kilometres).
PIXEL_TOL = 1e-6

FAST = settings(max_examples=40, deadline=None)


@dataclass(frozen=True)
class Area:
    """A CRS and where realistic scenes in it have their top-left corner."""

    epsg: int
    x: tuple[float, float]
    y: tuple[float, float]
    pixel: tuple[float, float]
    lat: tuple[float, float]  # latitudes every point of such a scene must fall in

    @property
    def wkt(self) -> str:
        # The same WKT flavour open_scene stores (rasterio's), not pyproj's WKT2.
        return str(CRS.from_epsg(self.epsg).to_wkt())


AREAS = [
    # UTM 33N: a Sentinel-2 scene from the Mediterranean up to Svalbard.
    Area(32633, (200_000.0, 700_000.0), (1_000_000.0, 8_800_000.0), (0.5, 60.0), (0.0, 84.0)),
    # UTM 33S: southern hemisphere, false northing 10,000 km.
    Area(32733, (200_000.0, 700_000.0), (1_500_000.0, 9_900_000.0), (0.5, 60.0), (-80.0, 0.0)),
    # Web Mercator: anywhere between about 80 S and 80 N, away from the antimeridian.
    Area(3857, (-19_000_000.0, 18_500_000.0), (-15_000_000.0, 15_500_000.0), (0.3, 40.0), (-85.06, 85.06)),
    # NSIDC sea-ice polar stereographic north, pole included.
    Area(3413, (-3_000_000.0, 2_500_000.0), (-2_500_000.0, 3_000_000.0), (10.0, 500.0), (30.0, 90.0)),
    # Antarctic polar stereographic, pole included.
    Area(3031, (-3_000_000.0, 2_500_000.0), (-2_500_000.0, 3_000_000.0), (10.0, 500.0), (-90.0, -30.0)),
]

SIDE = 4000  # scene side in pixels (at 500 m pixels, 2000 km)


@st.composite
def transforms(draw: st.DrawFn, area: Area) -> Affine:
    """A north-up, south-up or rotated pixel-to-map transform with a realistic origin."""
    px = draw(st.floats(*area.pixel))
    x0 = draw(st.floats(*area.x))
    y0 = draw(st.floats(*area.y))
    kind = draw(st.sampled_from(["north-up", "south-up", "rotated"]))
    if kind == "north-up":
        return Affine(px, 0.0, x0, 0.0, -px, y0)
    if kind == "south-up":
        return Affine(px, 0.0, x0, 0.0, px, y0 - SIDE * px)
    angle = draw(st.floats(-30.0, 30.0))
    return Affine.translation(x0, y0) @ Affine.rotation(angle) @ Affine.scale(px, -px)


pixels = st.lists(st.tuples(st.floats(0, SIDE), st.floats(0, SIDE)), min_size=1, max_size=20).map(np.array)


@pytest.mark.parametrize("area", AREAS, ids=lambda a: f"EPSG:{a.epsg}")
def test_pixel_map_lonlat_round_trip(area: Area) -> None:
    @FAST
    @given(transforms(area), pixels)
    def check(transform: Affine, pix: np.ndarray) -> None:
        cols, rows = pix[:, 0], pix[:, 1]
        x, y = pixel_to_map(transform, cols, rows)
        lon, lat = to_lonlat(area.wkt, x, y)
        # The points are where the CRS says they are (catches swapped lon/lat axes).
        assert np.all((lat >= area.lat[0]) & (lat <= area.lat[1])), lat
        assert np.all(np.abs(lon) <= 180)
        x2, y2 = from_lonlat(area.wkt, lon, lat)
        cols2, rows2 = map_to_pixel(transform, x2, y2)
        np.testing.assert_allclose(cols2, cols, rtol=0, atol=PIXEL_TOL)
        np.testing.assert_allclose(rows2, rows, rtol=0, atol=PIXEL_TOL)

    check()


@pytest.mark.parametrize(
    ("epsg", "xy", "lonlat"),
    [
        (32633, (500_000.0, 0.0), (15.0, 0.0)),  # central meridian on the equator
        (32733, (500_000.0, 10_000_000.0), (15.0, 0.0)),  # ... via the southern false northing
        (32633, (500_000.0, 4_982_950.4), (15.0, 45.0)),  # 0.9996 x the meridian arc to 45 N
        (3857, (0.0, 0.0), (0.0, 0.0)),
        (3857, (20_037_508.342789244, 0.0), (180.0, 0.0)),
        (3031, (0.0, 0.0), (None, -90.0)),  # the pole: any longitude
        (3413, (0.0, 0.0), (None, 90.0)),
        (3413, (1_000_000.0, -1_000_000.0), (0.0, 76.9988)),  # lon0 = -45: 45 degrees east of it
    ],
)
def test_to_lonlat_known_points(epsg: int, xy: tuple[float, float], lonlat: tuple[float | None, float]) -> None:
    wkt = CRS.from_epsg(epsg).to_wkt()
    lon, lat = to_lonlat(wkt, np.array([xy[0]]), np.array([xy[1]]))
    assert lat[0] == pytest.approx(lonlat[1], abs=1e-4)
    if lonlat[0] is not None:
        assert lon[0] == pytest.approx(lonlat[0], abs=1e-4)


def test_geographic_crs_is_lon_lat_order() -> None:
    # EPSG:4326's WKT says latitude first; outputs must still be (lon, lat).
    wkt = CRS.from_epsg(4326).to_wkt()
    transform = Affine(0.001, 0, 12.5, 0, -0.001, 55.75)
    x, y = pixel_to_map(transform, np.array([0.0, 100.0]), np.array([0.0, 250.0]))
    lon, lat = to_lonlat(wkt, x, y)
    np.testing.assert_allclose(lon, [12.5, 12.6], atol=1e-12)
    np.testing.assert_allclose(lat, [55.75, 55.5], atol=1e-12)
    x2, y2 = from_lonlat(wkt, lon, lat)
    np.testing.assert_allclose(np.stack([x2, y2]), np.stack([x, y]), atol=1e-12)


def test_pixel_to_map_uses_pixel_corners() -> None:
    # (0, 0) is the top-left corner of the top-left pixel, i.e. the transform's origin.
    t = Affine(10, 0, 500_000, 0, -10, 4_800_000)
    x, y = pixel_to_map(t, np.array([0.0, 0.5, 3.0]), np.array([0.0, 0.5, 2.0]))
    np.testing.assert_array_equal(x, [500_000, 500_005, 500_030])
    np.testing.assert_array_equal(y, [4_800_000, 4_799_995, 4_799_980])


def _shoelace(ring: np.ndarray) -> np.ndarray:
    """Twice the signed area of ``(n, k, 2)`` rings (positive when counter-clockwise)."""
    x, y = ring[..., 0], ring[..., 1]
    return (x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y).sum(axis=-1)


boxes = st.lists(
    st.tuples(st.floats(0, 3000), st.floats(0, 3000), st.floats(1, 200), st.floats(1, 200)),
    min_size=1,
    max_size=10,
).map(lambda b: np.array([(x, y, x + w, y + h) for x, y, w, h in b]))

RING_AREAS = [a for a in AREAS if a.epsg in (32633, 32733, 3857)]


@pytest.mark.parametrize("area", RING_AREAS, ids=lambda a: f"EPSG:{a.epsg}")
@pytest.mark.parametrize("south_up", [False, True], ids=["north-up", "south-up"])
def test_box_rings_are_closed_and_counter_clockwise(area: Area, south_up: bool) -> None:
    @settings(max_examples=25, deadline=None)
    @given(st.floats(*area.x), st.floats(*area.y), st.floats(*area.pixel), boxes)
    def check(x0: float, y0: float, px: float, b: np.ndarray) -> None:
        t = Affine(px, 0, x0, 0, px, y0 - SIDE * px) if south_up else Affine(px, 0, x0, 0, -px, y0)
        cols, rows = box_corners(b)
        assert cols.shape == rows.shape == (len(b), 4)
        mx, my = pixel_to_map(t, cols, rows)
        lon, lat = to_lonlat(area.wkt, mx.ravel(), my.ravel())
        corners = np.stack([lon.reshape(-1, 4), lat.reshape(-1, 4)], axis=2)
        raw = _shoelace(corners)
        # box_corners runs counter-clockwise on a north-up map and clockwise on a south-up one;
        # ccw_rings must turn both into counter-clockwise rings (RFC 7946 exterior rings).
        assert np.all(raw < 0) if south_up else np.all(raw > 0)
        rings = ccw_rings(corners)
        assert rings.shape == (len(b), 5, 2)
        np.testing.assert_array_equal(rings[:, 0], rings[:, -1])
        assert np.all(_shoelace(rings[:, :4]) > 0)
        for ring, corner in zip(rings, corners, strict=True):
            # Same four vertices, nothing invented or lost.
            assert sorted(map(tuple, ring[:4])) == sorted(map(tuple, corner))

    check()


def test_box_corners_order() -> None:
    cols, rows = box_corners(np.array([[1.0, 2.0, 3.0, 5.0]]))
    # (x0, y1) -> (x1, y1) -> (x1, y0) -> (x0, y0): bottom-left first on a north-up map.
    np.testing.assert_array_equal(cols, [[1, 3, 3, 1]])
    np.testing.assert_array_equal(rows, [[5, 5, 2, 2]])


def test_ground_distance_one_degree_of_latitude() -> None:
    # 1 degree on a sphere of the mean Earth radius: pi / 180 * 6371.0088 km = 111.195 km.
    d = ground_distance_m(np.array([0.0, 30.0]), np.array([0.0, 45.0]), np.array([0.0, 30.0]), np.array([1.0, 46.0]))
    np.testing.assert_allclose(d, 111_195.08, atol=0.05)


def test_ground_distance_one_degree_of_longitude_shrinks_with_latitude() -> None:
    lat = np.array([0.0, 60.0])
    d = ground_distance_m(np.zeros(2), lat, np.ones(2), lat)
    np.testing.assert_allclose(d, [111_195.08, 111_195.08 / 2], rtol=1e-4)
    assert ground_distance_m(np.array(10.0), np.array(50.0), np.array(10.0), np.array(50.0)) == 0


@pytest.mark.parametrize("lat", [-70.0, -10.0, 0.0, 35.0, 60.0, 78.0])
def test_ground_distance_matches_the_ellipsoid_for_short_separations(lat: float) -> None:
    # The haversine promises to be ample for 10-1000 m. A sphere of the mean radius is off the
    # WGS84 geodesic by at most 0.56 % (north-south at the equator), so allow 0.6 %.
    geod = Geod(ellps="WGS84")
    lon2, lat2, _ = geod.fwd(np.full(4, 20.0), np.full(4, lat), [0, 45, 90, 135], [10, 100, 500, 1000])
    d = ground_distance_m(np.full(4, 20.0), np.full(4, lat), np.asarray(lon2), np.asarray(lat2))
    np.testing.assert_allclose(d, [10, 100, 500, 1000], rtol=6e-3)
