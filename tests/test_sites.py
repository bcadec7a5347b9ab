"""Grouping detections into sites (sitewatch.imagery.candidates.sites), through the store, and acquisition dates."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely

from sitewatch.imagery.candidates.sites import SitePoint, assign, parse_site_distances, site_distances
from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.acquisition import acquisition_date, date_in_metadata, date_in_name
from sitewatch.imagery.scenes.georef import ground_distance_m
from sitewatch.imagery.scenes.scene import open_scene

LON0, LAT0 = 88.40, 22.60  # the Brick Belt, near Kolkata
DEFAULTS = {"kiln": 60.0, "vessel": 50.0}
BANDS = ("B02", "B03", "B04", "B08")


def east(metres: float, lon: float = LON0, lat: float = LAT0) -> tuple[float, float]:
    """The point ``metres`` east of ``(lon, lat)`` (great-circle distance, checked)."""
    # Bisection on the haversine distance, so the tests' distances are exact to a millimetre.
    lo, hi = 0.0, metres / 100_000.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if ground_distance_m(lon, lat, lon + mid, lat) < metres:
            lo = mid
        else:
            hi = mid
    out = (lon + (lo + hi) / 2, lat)
    assert abs(float(ground_distance_m(lon, lat, *out)) - metres) < 1e-3
    return out


def group(dets: list[tuple[str, str | None, float, float]], distances=None) -> tuple[list[int], list[SitePoint]]:
    sites: list[SitePoint] = []
    return assign(sites, dets, distances or DEFAULTS), sites


# --- the grouping arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(("cls", "limit"), [("kiln", 60.0), ("vessel", 50.0)])
def test_distance_just_inside_joins_and_just_outside_does_not(cls, limit):
    inside = east(limit - 0.5)
    outside = east(limit + 0.5)
    which, sites = group([(cls, "2024-01-05", LON0, LAT0), (cls, "2024-01-05", *inside)])
    assert which == [0, 0] and len(sites) == 1 and sites[0].n == 2
    which, sites = group([(cls, "2024-01-05", LON0, LAT0), (cls, "2024-01-05", *outside)])
    assert which == [0, 1] and len(sites) == 2


def test_kilns_group_across_dates_vessels_only_within_one_date():
    near = east(10.0)
    dets = [("kiln", "2024-01-05", LON0, LAT0), ("kiln", "2024-03-01", *near), ("kiln", None, LON0, LAT0)]
    which, sites = group(dets)
    assert which == [0, 0, 0] and sites[0].date is None and sites[0].n == 3
    dets = [("vessel", "2024-01-05", LON0, LAT0), ("vessel", "2024-03-01", *near), ("vessel", None, LON0, LAT0),
            ("vessel", "2024-01-05", *near)]
    which, sites = group(dets)
    assert which == [0, 1, 2, 0]
    assert [s.date for s in sites] == ["2024-01-05", "2024-03-01", None]


def test_classes_never_share_a_site():
    which, sites = group([("kiln", None, LON0, LAT0), ("vessel", None, LON0, LAT0)])
    assert which == [0, 1] and {s.cls for s in sites} == {"kiln", "vessel"}


def test_site_point_is_the_running_mean_and_the_nearest_site_wins():
    a, b = (LON0, LAT0), east(40.0)
    c = east(75.0)
    # b joins a (40 m, within kilns' 60 m); the point moves to 20 m; c is then 55 m from it and joins too.
    which, sites = group([("kiln", None, *a), ("kiln", None, *b), ("kiln", None, *c)])
    assert which == [0, 0, 0]
    assert sites[0].lon == pytest.approx((a[0] + b[0] + c[0]) / 3, abs=1e-12)
    assert float(ground_distance_m(LON0, LAT0, sites[0].lon, sites[0].lat)) == pytest.approx(115.0 / 3, abs=0.01)
    # Two sites 100 m apart: a detection 40 m from the first and 60 m from the second joins the first.
    far = east(100.0)
    between = east(40.0)
    which, sites = group([("kiln", None, LON0, LAT0), ("kiln", None, *far), ("kiln", None, *between)])
    assert which == [0, 1, 0]


def test_configured_distance_changes_the_grouping():
    p = east(150.0)
    assert group([("kiln", None, LON0, LAT0), ("kiln", None, *p)])[0] == [0, 1]
    assert group([("kiln", None, LON0, LAT0), ("kiln", None, *p)], {"kiln": 200.0})[0] == [0, 0]


def test_site_distances_defaults_overrides_and_errors():
    assert site_distances(["kiln", "vessel", "tower"]) == {"kiln": 60.0, "vessel": 50.0, "tower": 50.0}
    assert site_distances(["kiln", "vessel"], {"kiln": 80}, {"kiln": 300, "vessel": 40}) == {"kiln": 80.0, "vessel": 40.0}
    assert parse_site_distances(["kiln=120", " vessel = 30.5 "]) == {"kiln": 120.0, "vessel": 30.5}
    for bad in (["kiln"], ["kiln=abc"], ["kiln=-5"], ["=5"], ["kiln=0"], ["kiln=nan"]):
        with pytest.raises(UsageError, match="--site-distance"):
            parse_site_distances(bad)
    with pytest.raises(UsageError, match="kiln=-1"):
        site_distances(["kiln"], {"kiln": -1})


# --- through the store: stable ids, reviews kept ------------------------------------------------


def test_sites_are_stable_and_keep_their_reviews_as_scenes_are_added(tmp_path, add_scene):
    store = CandidateStore.create(tmp_path / "c.gpkg")
    k2, k3 = east(500.0), east(1000.0)
    first = add_scene(store, "s1", [("kiln", LON0, LAT0, 0.9), ("kiln", *k2, 0.8), ("vessel", *k3, 0.7)],
                      acquired="2024-01-05")
    assert first.new_sites == ("kiln-000001", "kiln-000002", "vessel-000001") and first.run_id == "run-001"
    store.review("kiln-000001", "confirmed", "ana", "chimney")
    store.review("kiln-000002", "rejected", "ben")
    before = store.reviews()

    # Same kilns 30 m off on a later date, the vessel elsewhere, and a new kiln.
    k1b, k2b, k4 = east(30.0), east(530.0), east(2000.0)
    second = add_scene(store, "s2", [("kiln", *k1b, 0.95), ("kiln", *k2b, 0.6), ("kiln", *k4, 0.5),
                                     ("vessel", *k3, 0.9)], acquired="2024-02-10")
    assert second.run_id == "run-002"
    assert second.updated_sites == ("kiln-000001", "kiln-000002")
    assert second.new_sites == ("kiln-000003", "vessel-000002")  # the vessel: another date, another site
    assert store.reviews() == before  # the log is untouched
    s1 = store.site("kiln-000001")
    assert (s1.status, s1.reviewer, s1.note) == ("confirmed", "ana", "chimney")
    assert (s1.n_detections, s1.first_seen, s1.last_seen, s1.scenes) == (2, "2024-01-05", "2024-02-10", ("s1", "s2"))
    assert s1.max_score == pytest.approx(0.95) and s1.mean_score == pytest.approx(0.925)
    assert s1.date is None
    assert float(ground_distance_m(LON0, LAT0, s1.lon, s1.lat)) == pytest.approx(15.0, abs=0.05)
    assert store.site("kiln-000002").status == "rejected"
    assert store.site("kiln-000003").status == "unreviewed"
    assert [(s.site_id, s.date) for s in store.sites(cls="vessel")] == [("vessel-000001", "2024-01-05"),
                                                                         ("vessel-000002", "2024-02-10")]
    # The footprint is the hull of both boxes, counter-clockwise, and holds both centres.
    boxes = [d.polygon for d in store.detections(site_id="kiln-000001")]
    assert len(boxes) == 2 and s1.footprint is not None and s1.footprint.exterior.is_ccw
    assert all(s1.footprint.buffer(1e-9).covers(b) for b in boxes)
    assert s1.footprint.area < shapely.union_all(boxes).envelope.area * 1.0001
    assert {d.site_id for d in store.detections(scene="s2")} == {"kiln-000001", "kiln-000002", "kiln-000003",
                                                                 "vessel-000002"}


def test_site_distance_is_remembered_for_later_runs(tmp_path, add_scene):
    store = CandidateStore.create(tmp_path / "c.gpkg")
    add_scene(store, "s1", [("kiln", LON0, LAT0, 0.9)], site_distance={"kiln": 300.0})
    added = add_scene(store, "s2", [("kiln", *east(250.0), 0.9)])  # no distance given: 300 m from run 1
    assert added.site_distance["kiln"] == 300.0 and added.updated_sites == ("kiln-000001",)
    added = add_scene(store, "s3", [("kiln", *east(600.0), 0.9)], site_distance={"kiln": 100.0})
    assert added.new_sites == ("kiln-000002",)
    assert [r.site_distance["kiln"] for r in store.runs()] == [300.0, 300.0, 100.0]


def test_a_scene_already_in_the_store_is_refused_and_nothing_changes(tmp_path, add_scene):
    from sitewatch.imagery.errors import InputError

    store = CandidateStore.create(tmp_path / "c.gpkg")
    add_scene(store, "s1", [("kiln", LON0, LAT0, 0.9)])
    with pytest.raises(InputError, match="already in the candidate store"):
        add_scene(store, "s1", [("kiln", LON0, LAT0, 0.9)])
    assert len(store.detections()) == 1 and len(store.runs()) == 1 and len(store.sites()) == 1


# --- acquisition dates ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "date"), [
    ("kilns_20240115.tif", "2024-01-15"),
    ("scene-2024-01-15", "2024-01-15"),
    ("scene_2024_01_15_b", "2024-01-15"),
    ("S2A_MSIL2A_20230115T052141_N0509_R062_T43RGM_20230116T080020.SAFE", "2023-01-15"),
    ("T43RGM_20230704T050659_B02_10m.jp2", "2023-07-04"),
    ("scene_20241399.tif", None),        # month 13
    ("scene_20230229.tif", None),        # not a leap year
    ("id_120240115.tif", None),          # inside a longer number
    ("2024-01_15.tif", None),            # mixed separators
    ("port_A.tif", None),
])
def test_dates_in_names(name, date):
    assert date_in_name(name) == date


def test_dates_in_metadata():
    assert date_in_metadata({"TIFFTAG_DATETIME": "2024:03:02 10:11:12"}, ["TIFFTAG_DATETIME"]) == "2024-03-02"
    assert date_in_metadata({"acquisitionDateTime": "2022-11-30T05:00:00Z"}, ["ACQUISITIONDATETIME"]) == "2022-11-30"
    assert date_in_metadata({"ACQUISITIONDATETIME": "yesterday"}, ["ACQUISITIONDATETIME"]) is None


def test_scene_date_from_metadata_then_name_then_tiff_datetime(make_geotiff):
    named = make_geotiff(name="S2B_20240210_port.tif")
    assert acquisition_date(open_scene(named, BANDS)) == "2024-02-10"
    tagged = make_geotiff(name="S2B_20240210_tagged.tif")
    with rasterio.open(tagged, "r+") as ds:
        ds.update_tags(ACQUISITIONDATETIME="2024-02-09T04:55:00Z", TIFFTAG_DATETIME="2025:01:01 00:00:00")
    assert acquisition_date(open_scene(tagged, BANDS)) == "2024-02-09"  # metadata naming the acquisition wins
    plain = make_geotiff(name="port.tif")
    assert acquisition_date(open_scene(plain, BANDS)) is None
    with rasterio.open(plain, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2023:06:01 09:00:00")
    assert acquisition_date(open_scene(plain, BANDS)) == "2023-06-01"


def test_band_directory_date_from_its_name(tmp_path, make_geotiff):
    d = tmp_path / "S2A_MSIL2A_20230115T052141_N0509_R062_T43RGM_20230116T080020"
    d.mkdir()
    for b in BANDS:
        (d / f"T43RGM_{b}.tif").write_bytes(make_geotiff(bands=1, name=f"{b}.tif").read_bytes())
    assert acquisition_date(open_scene(d, BANDS)) == "2023-01-15"


def _brute_force(dets, distances):
    """The grouping rule written out plainly: compare with every site of the group."""
    sites: list[SitePoint] = []
    out = []
    for cls, acquired, lon, lat in dets:
        date = acquired if cls == "vessel" else None
        best, best_d = -1, float("inf")
        for i, s in enumerate(sites):
            if (s.cls, s.date) == (cls, date):
                d = float(ground_distance_m(s.lon, s.lat, lon, lat))
                if d <= distances[cls] and d < best_d:
                    best, best_d = i, d
        if best < 0:
            sites.append(SitePoint(cls, date, lon, lat, 1))
            best = len(sites) - 1
        else:
            sites[best].join(lon, lat)
        out.append(best)
    return out


@pytest.mark.parametrize("lat0", [0.0, 22.6, 64.0, -51.0])
def test_grid_search_matches_the_plain_rule(lat0):
    rng = np.random.default_rng(int(abs(lat0) * 10))
    n = 400
    # Points within ~3 km around a cell corner, in clumps, so that sites straddle cell edges.
    centres = rng.uniform(-0.02, 0.02, size=(40, 2))
    pick = centres[rng.integers(0, 40, n)] + rng.normal(0, 0.0006, size=(n, 2))
    classes = rng.choice(["kiln", "vessel"], n)
    dates = rng.choice(["2024-01-05", "2024-02-10"], n)
    dets = [(str(c), str(d), 10.0 + float(p[0]) / np.cos(np.radians(lat0)), lat0 + float(p[1]))
            for c, d, p in zip(classes, dates, pick, strict=True)]
    which, _ = group(dets, {"kiln": 100.0, "vessel": 50.0})
    assert which == _brute_force(dets, {"kiln": 100.0, "vessel": 50.0})
    assert len(set(which)) < n  # the test really groups
