"""``detect`` writes the candidate store and quick-looks; ``--append`` adds scenes and keeps every review.

One real ``demo``-model run on a small synthetic scene dated 2024-01-05, then the same scene
content dated 2024-02-10 appended while another process posts reviews: kilns stay put (one
site, two detections), vessels are per date (new sites).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from sitewatch.imagery.candidates.store import CandidateStore
from sitewatch.imagery.detect.pipeline import DetectSettings, detect
from sitewatch.imagery.errors import InputError, OutputError, UsageError
from sitewatch.imagery.models.registry import shipped_models
from sitewatch.imagery.synthetic.sentinel2 import make_scene

pytestmark = pytest.mark.skipif("demo" not in shipped_models(), reason="demo model not built")

SETTINGS = DetectSettings(workers=2)
REVIEWS_DURING_APPEND = 40


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _review_while_appending(path: str, site_ids: list[str], go, started) -> None:
    store = CandidateStore(path)
    started.set()
    go.wait()
    for i in range(REVIEWS_DURING_APPEND):
        store.review(site_ids[i % len(site_ids)], ("confirmed", "rejected", "unsure")[i % 3], "proc", f"during {i}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("append")
    first = d / "S2A_20240105_delta.tif"
    make_scene(first, seed=5, width=256, height=256, n_vessels=4, n_kilns=4)
    second = d / "S2B_20240210_delta.tif"
    shutil.copy(first, second)  # the same place on a later date
    out = d / "run"
    s1 = detect([first], "demo", out, SETTINGS)
    store = CandidateStore.in_run_dir(out)
    after_first = {s.site_id: s for s in store.sites()}
    kiln, vessel = "kiln-000001", "vessel-000001"
    store.review(kiln, "confirmed", "ana", "chimney")
    store.review(vessel, "rejected", "ana", "a pier")
    reviews_before = store.reviews()

    # Append while a reviewer in another process writes to the same store.
    ctx = multiprocessing.get_context("spawn")
    go, started = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_review_while_appending, args=(str(store.path), [kiln, "kiln-000002", vessel], go, started))
    proc.start()
    assert started.wait(60)
    go.set()
    s2 = detect([second], "demo", out, SETTINGS, append=True)
    proc.join(60)
    assert proc.exitcode == 0
    return {"dir": d, "out": out, "first": first, "second": second, "s1": s1, "s2": s2, "store": store,
            "after_first": after_first, "reviews_before": reviews_before}


def test_first_run_writes_the_store_and_quicklooks(runs):
    out, s1 = runs["out"], runs["s1"]
    assert sorted(p.name for p in out.iterdir()) == ["candidates.gpkg", "detections.geojson", "map.html",
                                                     "quicklooks", "run.json"]
    after = runs["after_first"]
    assert sum(s.n_detections for s in after.values()) == sum(s1.counts().values()) > 0
    assert {s.cls for s in after.values()} == {"kiln", "vessel"}
    assert all(s.first_seen == "2024-01-05" for s in after.values())
    assert not list(runs["dir"].glob(".*"))  # no staging left


def test_append_groups_kilns_across_dates_and_vessels_per_date(runs):
    store, s1, s2 = runs["store"], runs["s1"], runs["s2"]
    before = runs["after_first"]
    sites = {s.site_id: s for s in store.sites()}
    kilns_before = {k: v for k, v in before.items() if v.cls == "kiln"}
    kilns_now = {k: v for k, v in sites.items() if v.cls == "kiln"}
    assert set(kilns_now) == set(kilns_before)  # the same kilns, same ids: no new kiln sites
    for sid, k in kilns_now.items():
        assert k.n_detections == 2 and (k.first_seen, k.last_seen) == ("2024-01-05", "2024-02-10"), sid
        assert k.scenes == ("S2A_20240105_delta", "S2B_20240210_delta")
        assert abs(k.lon - kilns_before[sid].lon) < 1e-6 and abs(k.lat - kilns_before[sid].lat) < 1e-6
    vessels_before = [k for k, v in before.items() if v.cls == "vessel"]
    vessels_now = [v for v in sites.values() if v.cls == "vessel"]
    assert len(vessels_now) == 2 * len(vessels_before) == 2 * s2.counts()["vessel"]
    assert {v.date for v in vessels_now} == {"2024-01-05", "2024-02-10"}
    assert all(sites[k].date == "2024-01-05" for k in vessels_before)  # old ids kept their meaning
    assert len(store.detections()) == sum(s1.counts().values()) + sum(s2.counts().values())


def test_append_keeps_every_review_and_loses_none_written_meanwhile(runs):
    store = runs["store"]
    log = store.reviews()
    assert log[:2] == runs["reviews_before"]
    assert len(log) == 2 + REVIEWS_DURING_APPEND
    assert sorted(r.note for r in log[2:]) == sorted(f"during {i}" for i in range(REVIEWS_DURING_APPEND))
    for sid in ("kiln-000001", "kiln-000002", "vessel-000001"):
        site, last = store.site(sid), store.reviews(sid)[-1]
        assert (site.status, site.note, site.reviewed_at) == (last.status, last.note, last.time)


def test_outputs_cover_every_scene_and_list_the_runs(runs):
    out, store = runs["out"], runs["store"]
    fc = json.loads((out / "detections.geojson").read_text())
    assert len(fc["features"]) == len(store.detections())
    assert {f["properties"]["scene"] for f in fc["features"]} == {"S2A_20240105_delta", "S2B_20240210_delta"}
    assert {f["properties"]["site_id"] for f in fc["features"]} == {s.site_id for s in store.sites()}
    run = json.loads((out / "run.json").read_text())
    assert [r["run_id"] for r in run["runs"]] == ["run-001", "run-002"]
    assert [r["scenes"] for r in run["runs"]] == [["S2A_20240105_delta"], ["S2B_20240210_delta"]]
    assert run["detections"] == {c: sum(f["properties"]["class"] == c for f in fc["features"]) for c in ("vessel", "kiln")}
    assert run["tiles"]["total"] == sum(i["tiles"]["total"] for i in run["inputs"])
    assert run["store"]["site_distance_m"] == {"kiln": 60.0, "vessel": 50.0}
    for entry in run["inputs"]:
        png = out / entry["quicklook"]
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] * entry["quicklook_scale"] == pytest.approx(256, abs=entry["quicklook_scale"])
        w, s, e, n = entry["bounds_lonlat"]
        assert w < e and s < n and entry["acquired"] in ("2024-01-05", "2024-02-10")
    assert sorted(p.name for p in (out / "quicklooks").iterdir()) == ["S2A_20240105_delta.png", "S2B_20240210_delta.png"]
    html = (out / "map.html").read_text()
    assert "S2A_20240105_delta" in html and "S2B_20240210_delta" in html


def test_appending_a_scene_already_in_the_run_is_refused_and_changes_nothing(runs):
    out = runs["out"]
    before = _tree(out)
    with pytest.raises(InputError, match="already in the candidate store") as info:
        detect([runs["second"]], "demo", out, SETTINGS, append=True)
    assert info.value.exit_code == 3
    renamed = runs["dir"] / "copy" / "S2B_20240210_delta.tif"  # another file of the same scene name
    renamed.parent.mkdir()
    shutil.copy(runs["second"], renamed)
    with pytest.raises(InputError, match="has the name of"):
        detect([renamed], "demo", out, SETTINGS, append=True)
    with pytest.raises(UsageError, match="choose one"):
        detect([runs["first"]], "demo", out, SETTINGS, append=True, overwrite=True)
    with pytest.raises(OutputError, match="reviews that --overwrite would discard") as info:
        detect([runs["first"]], "demo", out, SETTINGS, overwrite=True)
    assert info.value.exit_code == 5
    assert _tree(out) == before


def test_append_to_a_new_directory_is_a_new_run_and_foreign_files_are_refused(runs):
    fresh = runs["dir"] / "fresh"
    detect([runs["first"]], "demo", fresh, SETTINGS, append=True, site_distance={"kiln": 250.0})
    run = json.loads((fresh / "run.json").read_text())
    assert [r["run_id"] for r in run["runs"]] == ["run-001"] and run["store"]["site_distance_m"]["kiln"] == 250.0
    foreign = runs["dir"] / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not sitewatch results"):
        detect([runs["first"]], "demo", foreign, SETTINGS, append=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
