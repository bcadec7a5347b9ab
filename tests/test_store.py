"""The candidate store: a GeoPackage GDAL reads, the review log, and concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from pyogrio.raw import read as ogr_read

from sitewatch.imagery.candidates.export import export_sites
from sitewatch.imagery.candidates.gpkg import APPLICATION_ID, USER_VERSION, geometry_blob, read_geometry
from sitewatch.imagery.candidates.gpkg import connect as gpkg_connect
from sitewatch.imagery.candidates.store import AUDIT_TRIGGERS, STATUSES, CandidateStore, Detection, RunInfo, SceneInfo
from sitewatch.imagery.errors import InputError, NotFoundError, UsageError

LON0, LAT0 = 88.40, 22.60
STEP = 0.01  # ~1 km between test sites


def _filled(tmp_path: Path, add_scene) -> CandidateStore:
    """A store with 2 scenes: 3 kiln sites (one seen twice) and 3 vessel sites."""
    store = CandidateStore.create(tmp_path / "candidates.gpkg")
    add_scene(store, "s1", [("kiln", LON0 + i * STEP, LAT0, 0.5 + 0.1 * i) for i in range(3)]
              + [("vessel", LON0, LAT0 + 0.05, 0.9)], acquired="2024-01-05")
    add_scene(store, "s2", [("kiln", LON0, LAT0, 0.7), ("vessel", LON0, LAT0 + 0.05, 0.8),
                            ("vessel", LON0 + STEP, LAT0 + 0.05, 0.6)], acquired="2024-02-10")
    return store


# --- the GeoPackage as GDAL sees it ------------------------------------------------------------


def test_gdal_reads_the_layers_with_their_geometry_crs_and_rows(tmp_path, add_scene):
    store = _filled(tmp_path, add_scene)
    store.review("kiln-000001", "confirmed", "ana")
    layers = dict(pyogrio.list_layers(store.path))
    assert {k: layers[k] for k in ("detections", "sites", "site_footprints", "reviews")} == {
        "detections": "Polygon", "sites": "Point", "site_footprints": "Polygon", "reviews": None}
    expected_rows = {"detections": 7, "sites": 6, "site_footprints": 6, "reviews": 1, "scenes": 2, "runs": 2}
    for layer, rows in expected_rows.items():
        info = pyogrio.read_info(store.path, layer=layer)
        assert info["features"] == rows, layer
        if layers[layer] is not None:
            assert info["crs"] == "EPSG:4326", layer
    fields = set(pyogrio.read_info(store.path, layer="sites")["fields"])
    assert {"site_id", "class", "date", "first_seen", "last_seen", "scenes", "n_detections", "max_score",
            "mean_score", "status", "reviewer", "reviewed_at", "note"} <= fields
    fields = set(pyogrio.read_info(store.path, layer="detections")["fields"])
    assert {"det_id", "scene", "scene_source", "acquired", "class", "score", "lon", "lat", "run_id", "model",
            "model_version", "site_id"} <= fields
    assert set(pyogrio.read_info(store.path, layer="reviews")["fields"]) == {"site_id", "status", "reviewer", "note",
                                                                              "time", "chain"}
    # Geometries and attributes as GDAL decodes them: points at the mean detection centre.
    meta, _, geoms, values = ogr_read(store.path, layer="sites")
    cols = dict(zip(meta["fields"], values, strict=True))
    points = shapely.from_wkb(geoms)
    assert np.allclose(shapely.get_x(points), cols["lon"]) and np.allclose(shapely.get_y(points), cols["lat"])
    k1 = list(cols["site_id"]).index("kiln-000001")
    assert cols["status"][k1] == "confirmed" and cols["n_detections"][k1] == 2
    meta, _, geoms, values = ogr_read(store.path, layer="detections")
    boxes = shapely.from_wkb(geoms)
    lon, lat = values[list(meta["fields"]).index("lon")], values[list(meta["fields"]).index("lat")]
    assert shapely.contains_xy(boxes, lon, lat).all()


def test_geopackage_header_pragmas_and_srs(tmp_path):
    store = CandidateStore.create(tmp_path / "c.gpkg")
    with gpkg_connect(store.path) as con:
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID == 0x47504B47
        assert con.execute("PRAGMA user_version").fetchone()[0] == USER_VERSION == 10400
        srs = {r[0]: r[1] for r in con.execute("SELECT srs_id, organization FROM gpkg_spatial_ref_sys")}
        assert srs == {-1: "NONE", 0: "NONE", 4326: "EPSG"}
        kinds = dict(con.execute("SELECT table_name, data_type FROM gpkg_contents"))
        assert kinds["sites"] == "features" and kinds["reviews"] == "attributes"
    assert not list(tmp_path.glob(".*"))  # built under a temporary name, nothing left over


@pytest.mark.parametrize("geom", [shapely.Point(88.4, 22.6), shapely.box(88.4, 22.6, 88.41, 22.61),
                                  shapely.Polygon()])
def test_geometry_blobs_round_trip(geom):
    blob = geometry_blob(geom)
    assert blob[:2] == b"GP" and int.from_bytes(blob[4:8], "little") == 4326
    back = read_geometry(blob)
    assert back is not None and back.equals(geom) if not geom.is_empty else back.is_empty


def test_opening_something_that_is_not_a_store(tmp_path):
    with pytest.raises(InputError, match="no such candidate store"):
        CandidateStore(tmp_path / "none.gpkg")
    (tmp_path / "text.gpkg").write_text("hello")
    with pytest.raises(InputError, match="GeoPackage"):
        CandidateStore(tmp_path / "text.gpkg")
    sqlite3.connect(tmp_path / "empty.gpkg").execute("CREATE TABLE t (a)").connection.close()
    with pytest.raises(InputError, match="not a sitewatch candidate store"):
        CandidateStore(tmp_path / "empty.gpkg")
    with pytest.raises(InputError, match="holds no candidates.gpkg"):
        CandidateStore.in_run_dir(tmp_path)
    with pytest.raises(InputError, match="no such run directory"):
        CandidateStore.in_run_dir(tmp_path / "missing")


# --- reviews ---------------------------------------------------------------------------------------


def test_reviews_are_logged_and_the_site_follows_the_latest(tmp_path, add_scene):
    store = _filled(tmp_path, add_scene)
    r1 = store.review("kiln-000002", "unsure", "ana", "smoke?")
    r2 = store.review("kiln-000002", "confirmed", "ben", "chimney and stacks")
    assert r2.review_id == r1.review_id + 1 and r1.time <= r2.time and r2.time.endswith("Z")
    site = store.site("kiln-000002")
    assert (site.status, site.reviewer, site.note, site.reviewed_at) == ("confirmed", "ben", "chimney and stacks",
                                                                         r2.time)
    assert [r.status for r in store.reviews("kiln-000002")] == ["unsure", "confirmed"]
    assert store.reviews("kiln-000001") == []
    assert [s.site_id for s in store.sites(status="confirmed")] == ["kiln-000002"]
    assert [s.site_id for s in store.sites(status=["unsure", "confirmed"], cls="kiln")] == ["kiln-000002"]
    assert len(store.sites(status="unreviewed")) == 5
    counts = store.counts()
    assert counts["kiln"]["confirmed"] == 1 and counts["kiln"]["sites"] == 3 and counts["vessel"]["detections"] == 3


def test_bad_reviews_are_refused_with_a_clear_error(tmp_path, add_scene):
    store = _filled(tmp_path, add_scene)
    with pytest.raises(UsageError, match="'maybe': use one of unreviewed, confirmed, rejected, unsure") as info:
        store.review("kiln-000001", "maybe", "ana")
    assert info.value.exit_code == 2
    with pytest.raises(NotFoundError, match="kiln-000999") as info:
        store.review("kiln-000999", "confirmed", "ana")
    assert info.value.exit_code == 2 and isinstance(info.value, KeyError)
    with pytest.raises(NotFoundError):
        store.site("nope")
    with pytest.raises(UsageError, match="reviewer"):
        store.review("kiln-000001", "confirmed", "  ")
    with pytest.raises(UsageError):
        store.sites(status="done")
    assert store.reviews() == [] and store.site("kiln-000001").status == "unreviewed"


def test_the_review_log_is_append_only(tmp_path, add_scene):
    store = _filled(tmp_path, add_scene)
    store.review("kiln-000001", "rejected", "ana")
    with gpkg_connect(store.path) as con:
        for sql in ("UPDATE reviews SET status = 'confirmed'", "DELETE FROM reviews"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                con.execute(sql)
        with pytest.raises(sqlite3.IntegrityError, match="follows the review log"):  # e.g. a status typed in QGIS
            con.execute("UPDATE sites SET status = 'maybe'")
    assert [r.status for r in store.reviews()] == ["rejected"]


def test_the_review_log_cannot_be_rewritten_or_bypassed_on_the_file(tmp_path, add_scene):
    """The probes of a hostile edit with the file in hand (sqlite3, QGIS): each is refused."""
    store = _filled(tmp_path, add_scene)
    first = store.review("kiln-000001", "rejected", "ana", "a roof")
    store.review("kiln-000002", "confirmed", "ben")
    with gpkg_connect(store.path) as con:
        # rewrite and back-date a review: REPLACE deletes without firing DELETE triggers
        for when in ("2020-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z"):
            with pytest.raises(sqlite3.IntegrityError, match="cannot be reused or replaced|dated before the last one"):
                con.execute("INSERT OR REPLACE INTO reviews (review_id, site_id, status, reviewer, note, time) "
                            "VALUES (?, 'kiln-000001', 'confirmed', 'ana', '', ?)", (first.review_id, when))
        with pytest.raises(sqlite3.IntegrityError, match="cannot be reused or replaced"):
            con.execute("REPLACE INTO reviews (review_id, site_id, status, reviewer, note, time) "
                        "VALUES (?, 'kiln-000001', 'confirmed', 'ana', '', '2999-01-01T00:00:00.000Z')", (first.review_id,))
        with pytest.raises(sqlite3.IntegrityError, match="dated before the last one"):
            con.execute("INSERT INTO reviews (site_id, status, reviewer, note, time) "
                        "VALUES ('kiln-000001', 'confirmed', 'ana', '', '2020-01-01T00:00:00.000Z')")
        with pytest.raises(sqlite3.IntegrityError, match="goes after the last one"):
            con.execute("INSERT INTO reviews (review_id, site_id, status, reviewer, note, time) "
                        "VALUES (-5, 'kiln-000001', 'confirmed', 'ana', '', '2999-01-01T00:00:00.000Z')")
        # change what export and estimate read without a review
        for sql in ("UPDATE sites SET status = 'confirmed' WHERE site_id = 'kiln-000001'",
                    "UPDATE sites SET status = 'confirmed', reviewer = 'ana' WHERE site_id = 'kiln-000003'",
                    "UPDATE sites SET note = 'edited' WHERE site_id = 'kiln-000002'"):
            with pytest.raises(sqlite3.IntegrityError, match="follows the review log"):
                con.execute(sql)
        with pytest.raises(sqlite3.IntegrityError, match="starts unreviewed"):
            con.execute("INSERT INTO sites (site_id, class, scenes, n_detections, max_score, mean_score, lon, lat, status) "
                        "VALUES ('kiln-999999', 'kiln', '[]', 1, 0.9, 0.9, 0, 0, 'confirmed')")
        # what sitewatch itself writes still goes through: detections appended to a site keep its review
        con.execute("UPDATE sites SET n_detections = n_detections WHERE site_id = 'kiln-000001'")
    assert [(r.site_id, r.status) for r in store.reviews()] == [("kiln-000001", "rejected"), ("kiln-000002", "confirmed")]
    assert store.site("kiln-000001").status == "rejected" and store.check() == []


def test_a_rewritten_log_breaks_the_hash_chain(tmp_path, add_scene):
    """Someone with the file drops the triggers and edits a past review: the chain shows it."""
    store = _filled(tmp_path, add_scene)
    for site, status in (("kiln-000001", "rejected"), ("kiln-000002", "confirmed"), ("kiln-000001", "unsure")):
        store.review(site, status, "ana")
    head = store.chain_head()
    assert head is not None and len(head) == 64 and store.check() == []
    with gpkg_connect(store.path) as con:
        for name in ("reviews_append_only_update", *AUDIT_TRIGGERS):
            con.execute(f"DROP TRIGGER {name}")
        con.execute("UPDATE reviews SET reviewer = 'ben' WHERE review_id = 2")
    problems = store.check()
    assert problems[-1] == ("review 2 (site kiln-000002): its chain hash does not follow from the reviews before it: "
                            "the log was rewritten")
    assert problems[0].startswith("site kiln-000002: its review ('confirmed' by ana at") and "by ben" in problems[0]


def test_check_names_the_sites_whose_status_and_log_disagree(tmp_path, add_scene):
    """With the triggers dropped (an older sitewatch, or someone with the file), edits are caught
    by the check; export and estimate refuse the store; opening it restores the triggers."""
    store = _filled(tmp_path, add_scene)
    store.review("kiln-000001", "rejected", "ana")
    with gpkg_connect(store.path) as con:
        for name in AUDIT_TRIGGERS:
            con.execute(f"DROP TRIGGER {name}")
        con.execute("UPDATE sites SET status = 'confirmed' WHERE site_id IN ('kiln-000001', 'kiln-000002')")
    problems = store.check()
    assert problems == ["site kiln-000001: status 'confirmed' but its last review says 'rejected' by ana at "
                        f"{store.reviews()[0].time}", "site kiln-000002: status 'confirmed' but no review in the log"]
    with pytest.raises(InputError, match="kiln-000001.*kiln-000002.*sites DIR --check"):
        store.require_consistent()
    with pytest.raises(InputError, match="review log disagree"):
        export_sites(store, tmp_path / "out.geojson")
    assert not (tmp_path / "out.geojson").exists()
    reopened = CandidateStore(store.path)
    with gpkg_connect(reopened.path) as con:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert set(AUDIT_TRIGGERS) <= names
    # re-reviewing restores agreement
    reopened.review("kiln-000001", "confirmed", "ana")
    reopened.review("kiln-000002", "confirmed", "ana")
    assert reopened.check() == []


def test_sites_filters(tmp_path, add_scene):
    store = _filled(tmp_path, add_scene)
    assert [s.site_id for s in store.sites(cls="vessel", date="2024-02-10")] == ["vessel-000002", "vessel-000003"]
    assert [s.site_id for s in store.sites(min_score=0.69, cls="kiln")] == ["kiln-000001", "kiln-000003"]
    assert [s.site_id for s in store.sites(bbox=(LON0 + 0.5 * STEP, 0, 90, 22.61))] == ["kiln-000002", "kiln-000003"]
    assert len(store.sites(limit=2, offset=5)) == 1
    assert store.sites(in_sample=True) == []
    props = store.site("kiln-000001").properties()
    assert props["class"] == "kiln" and props["scenes"] == ["s1", "s2"] and props["first_seen"] == "2024-01-05"


# --- concurrent writers: real processes ----------------------------------------------------------

REVIEWERS = 3
REVIEWS_EACH = 40
APPEND_SCENES = 4


def _reviewer(path: str, name: str, site_ids: list[str], go) -> None:
    store = CandidateStore(path, timeout=60)
    go.wait()
    for i in range(REVIEWS_EACH):
        store.review(site_ids[i % len(site_ids)], STATUSES[1 + (i % 3)], name, f"{name} {i}")


def _appender(path: str, go) -> None:
    store = CandidateStore(path, timeout=60)
    run = RunInfo("2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z", "test", "1")
    go.wait()
    for k in range(APPEND_SCENES):
        dets = [Detection(f"new{k}", "kiln", 0.9, LON0 + 0.001 * j, LAT0, ((LON0, LAT0), (LON0 + 1e-4, LAT0),
                          (LON0 + 1e-4, LAT0 + 1e-4), (LON0, LAT0 + 1e-4), (LON0, LAT0))) for j in range(5)]
        scene = SceneInfo(f"new{k}", f"/data/new{k}.tif", f"2024-03-0{k + 1}", 10, 10, (88, 22, 89, 23))
        store.add_detections(run, [scene], dets)


def test_concurrent_reviewers_and_an_appending_run_lose_no_update(tmp_path, add_scene):
    store = _filled(tmp_path, add_scene)
    site_ids = [s.site_id for s in store.sites()]
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_reviewer, args=(str(store.path), f"r{k}", site_ids, go)) for k in range(REVIEWERS)]
    procs.append(ctx.Process(target=_appender, args=(str(store.path), go)))
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every process import and open the store before they all start writing
    go.set()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * len(procs)

    log = store.reviews()
    assert len(log) == REVIEWERS * REVIEWS_EACH
    for k in range(REVIEWERS):
        assert sorted(r.note for r in log if r.reviewer == f"r{k}") == sorted(f"r{k} {i}" for i in range(REVIEWS_EACH))
    assert [r.review_id for r in log] == list(range(1, len(log) + 1))
    # Every site's current review is the last one logged for it.
    for s in store.sites(site_ids=site_ids):
        last = [r for r in log if r.site_id == s.site_id][-1]
        assert (s.status, s.reviewer, s.note, s.reviewed_at) == (last.status, last.reviewer, last.note, last.time)
    # ... and the appending run added all its scenes and detections alongside.
    assert len(store.scenes()) == 2 + APPEND_SCENES and len(store.runs()) == 2 + APPEND_SCENES
    assert len(store.detections()) == 7 + 5 * APPEND_SCENES
    assert sum(s.n_detections for s in store.sites()) == len(store.detections())


def test_pages_in_sql_match_a_sort_of_every_site(tmp_path, add_scene):
    """Every sort key, both orders, pages of 7: concatenated they are the full list sorted in
    Python (ties by site id), with the filters' total and reviewed counts."""
    from sitewatch.imagery.candidates.store import SORT_KEYS

    rng = np.random.default_rng(4)
    store = CandidateStore.create(tmp_path / "candidates.gpkg")
    scores = np.round(rng.uniform(0.05, 0.99, 40), 2)
    scores[5] = scores[6]  # a tie
    add_scene(store, "s1", [("kiln" if i % 3 else "vessel", LON0 + i * STEP, LAT0, float(sc))
                            for i, sc in enumerate(scores)], acquired="2024-01-05")
    for k, site in enumerate(store.sites()[:9]):
        store.review(site.site_id, STATUSES[1 + k % 3], "ana")
    limits = {"kiln": 0.3, "vessel": 0.6}

    def uncertainty(s):  # the review server's definition
        t = limits[s.cls]
        return round(min(1.0, max(0.0, 1.0 - abs(s.max_score - t) / max(t, 1.0 - t))), 4)

    py_keys = {"score": lambda s: s.max_score, "uncertainty": uncertainty, "class": lambda s: s.cls,
               "status": lambda s: STATUSES.index(s.status), "id": lambda s: s.site_id,
               "date": lambda s: s.first_seen or s.date or ""}
    assert set(py_keys) == set(SORT_KEYS)
    for filters in ({}, {"cls": "kiln", "min_score": 0.2, "max_score": 0.8}, {"status": ["confirmed", "unreviewed"]}):
        every = store.sites(**filters)
        for key, fn in py_keys.items():
            for desc in (False, True):
                want = sorted(sorted(every, key=lambda s: s.site_id), key=fn, reverse=desc)
                got, total, reviewed = [], None, None
                for offset in range(0, len(every) + 7, 7):
                    part, total, reviewed = store.page(sort=key, descending=desc, limit=7, offset=offset,
                                                       thresholds=limits, **filters)
                    got += part
                assert [s.site_id for s in got] == [s.site_id for s in want], (filters, key, desc)
                assert total == len(every) and reviewed == sum(s.status != "unreviewed" for s in every)
    with pytest.raises(UsageError, match="colour"):
        store.page(sort="colour")


@pytest.mark.parametrize("name", ["ana\u202e", "a\u200bna", "\u2066ana\u2069", "ana\ufeff", "an\u00ada", "an\u2028a",
                                  "ana\nben", "\u200d"])
def test_reviewer_names_with_invisible_characters_are_refused(tmp_path, add_scene, name):
    store = _filled(tmp_path, add_scene)
    with pytest.raises(UsageError, match="reviewer: .*U\\+"):
        store.review("kiln-000001", "confirmed", name)
    assert store.reviews() == []


def test_reviewer_names_are_normalised(tmp_path, add_scene):
    store = _filled(tmp_path, add_scene)
    r = store.review("kiln-000001", "confirmed", "  Jose\u0301   Mari\u0301a ")
    assert r.reviewer == "Jos\u00e9 Mar\u00eda" == store.site("kiln-000001").reviewer
    assert store.check() == []


def test_gdal_reports_a_spatial_index_on_every_geometry_layer_and_reads_without_warnings(tmp_path, add_scene):
    """The R-tree is GDAL's own (fast_spatial_filter), follows appends and reviews, and the
    timestamps are the GeoPackage form (milliseconds, Z) that GDAL reads without a warning."""
    import warnings

    from sitewatch.imagery.candidates.store import GEOMETRY_LAYERS

    store = _filled(tmp_path, add_scene)
    add_scene(store, "s3", [("kiln", LON0 + 10 * STEP, LAT0, 0.9)], acquired="2024-03-01")
    store.review("kiln-000001", "confirmed", "ana")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a GDAL warning ("Non-conformant content ...") fails the test
        for layer in (*GEOMETRY_LAYERS, "reviews", "runs", "scenes"):
            ogr_read(store.path, layer=layer)
    for layer in GEOMETRY_LAYERS:
        assert pyogrio.read_info(store.path, layer=layer)["capabilities"]["fast_spatial_filter"], layer
        with gpkg_connect(store.path) as con:
            n_rtree = con.execute(f"SELECT count(*) FROM rtree_{layer}_geom").fetchone()[0]
            n_rows = con.execute(f"SELECT count(*) FROM {layer} WHERE geom IS NOT NULL").fetchone()[0]
        assert n_rtree == n_rows > 0, layer
    # a bounding-box read through the index finds exactly the new kiln's site
    west = LON0 + 9.5 * STEP
    _, _, geoms, fields = ogr_read(store.path, layer="sites", bbox=(west, LAT0 - 0.01, west + 2 * STEP, LAT0 + 0.01))
    assert len(geoms) == 1
    times = [r.time for r in store.reviews()]
    assert all(len(t) == 24 and t.endswith("Z") for t in times)


def test_a_store_made_without_a_spatial_index_gets_one_when_opened(tmp_path, add_scene):
    store = _filled(tmp_path, add_scene)
    with gpkg_connect(store.path) as con:  # as an older sitewatch wrote it
        for layer in ("detections", "sites", "site_footprints"):
            for (name,) in con.execute(f"SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'rtree_{layer}%'").fetchall():
                con.execute(f'DROP TRIGGER "{name}"')
            con.execute(f"DROP TABLE rtree_{layer}_geom")
        con.execute("DELETE FROM gpkg_extensions")
    assert not pyogrio.read_info(store.path, layer="sites")["capabilities"]["fast_spatial_filter"]
    CandidateStore(store.path)
    assert all(pyogrio.read_info(store.path, layer=layer)["capabilities"]["fast_spatial_filter"]
               for layer in ("detections", "sites", "site_footprints"))
