"""``sitewatch.training.evaluate`` and ``sitewatch evaluate``: matching arithmetic, files, and the demo end to end.

The hand-built case (UTM 33N, 10 m pixels; threshold 0.5) has, in scene ``a``:

=====  =====  ======================  ==========================================
det    score  box                     meaning
=====  =====  ======================  ==========================================
v6     0.95   vessel on kiln label K1  wrong class: FP under both criteria
v1     0.90   label A moved 1 px       TP under both (IoU 0.82, 10 m)
v3     0.85   label L3 moved 4 px      TP by IoU (0.875), FP by distance (40 m)
v2     0.80   box around label B       FP by IoU (0.25), TP by distance (0 m)
v5     0.60   nowhere                  FP under both
v4     0.20   exactly label C          below threshold: counts only for AP
k1     0.70   exactly kiln label K1    TP under both
=====  =====  ======================  ==========================================

Scene ``b`` has no labels and one vessel detection (0.55); ``c`` one kiln label and no
detections; ``d`` nothing at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyproj import CRS

from sitewatch.cli import main
from sitewatch.imagery.detect.worker import georeference
from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.models.registry import shipped_models
from sitewatch.imagery.scenes.scene import Scene
from sitewatch.training.evaluate import (
    EVAL_FILES,
    EvalReport,
    EvalSettings,
    average_precision,
    evaluate,
    write_evaluation,
)
from sitewatch.training.labels import SceneLabels

CLASSES = ("vessel", "kiln")
V, K = 0, 1
UTM33 = CRS.from_epsg(32633).to_wkt()


def _scene(name: str) -> Scene:
    return Scene(name=name, source=f"/data/{name}.tif", bands=(), width=1000, height=1000, crs_wkt=UTM33,
                 transform=(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_800_000.0), dtype="uint16", nodata=None)


def _dets(scene: Scene, rows: list[tuple[tuple[float, float, float, float], float, int]]) -> dict[str, np.ndarray]:
    boxes = np.array([r[0] for r in rows], dtype=float).reshape(-1, 4)
    return georeference(scene, boxes, np.array([r[1] for r in rows], dtype=np.float32),
                        np.array([r[2] for r in rows], dtype=np.int64))


def _labels(scene: Scene, rows: list[tuple[tuple[float, float, float, float], int]]) -> SceneLabels:
    return SceneLabels(scene, np.array([r[0] for r in rows], dtype=float).reshape(-1, 4),
                       np.array([r[1] for r in rows], dtype=np.int64))


A, B, L3, C, K1 = (10, 10, 20, 20), (100, 100, 110, 110), (200, 200, 260, 260), (300, 300, 310, 310), (500, 500, 520, 520)
K2 = (600, 600, 620, 620)
SCORE = {"v6": 0.95, "v1": 0.9, "v3": 0.85, "v2": 0.8, "v5": 0.6, "v4": 0.2, "k1": 0.7, "b": 0.55}


def _case(settings: EvalSettings | None = None) -> EvalReport:
    a, b, c, d = (_scene(n) for n in "abcd")
    results = [
        (a, _dets(a, [(K1, SCORE["v6"], V), ((11, 10, 21, 20), SCORE["v1"], V), ((204, 200, 264, 260), SCORE["v3"], V),
                      ((95, 95, 115, 115), SCORE["v2"], V), ((400, 400, 410, 410), SCORE["v5"], V), (C, SCORE["v4"], V),
                      (K1, SCORE["k1"], K)])),
        (b, _dets(b, [((50, 50, 60, 60), SCORE["b"], V)])),
        (c, _dets(c, [])),
        (d, _dets(d, [])),
    ]
    truth = [_labels(a, [(A, V), (B, V), (L3, V), (C, V), (K1, K)]), _labels(b, []), _labels(c, [(K2, K)]),
             _labels(d, [])]
    return evaluate(results, truth, CLASSES, settings or EvalSettings(), threshold=0.5)


def _figures(m: object) -> tuple[int, int, int]:
    c = m.counts  # type: ignore[attr-defined]
    return c.tp, c.fp, c.fn


def test_settings_are_validated_naming_the_flag() -> None:
    for kwargs, flag in [({"iou": 0.0}, "--iou"), ({"iou": 1.5}, "--iou"), ({"distance_m": -1.0}, "--distance-m"),
                         ({"distance_m": float("nan")}, "--distance-m"), ({"primary": "area"}, "--primary"),
                         ({"score_threshold": 1.2}, "--score-threshold")]:
        with pytest.raises(UsageError, match=flag):
            EvalSettings(**kwargs)  # type: ignore[arg-type]
    assert EvalSettings(iou=1.0, score_threshold=0.0).iou == 1.0


def test_average_precision_of_known_rankings() -> None:
    scores = np.array([0.9, 0.8, 0.7])
    hits = np.array([True, False, True])  # TP, FP, TP
    # two labels: recall 0.5 at precision 1, recall 1 at precision 2/3
    assert average_precision(scores, hits, 2) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # three labels: recall reaches only 2/3
    assert average_precision(scores, hits, 3) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    # the order comes from the scores, not from the order given
    assert average_precision(scores[::-1], hits[::-1], 2) == pytest.approx(5 / 6)
    # an FP ranked first: interpolated precision is the best at any higher recall
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([False, True, True]), 2) == pytest.approx(2 / 3)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 4) == 0.0
    assert average_precision(np.array([0.9]), np.array([False]), 0) is None


def test_matching_by_iou_and_by_metres_per_scene() -> None:
    r = _case()
    a = r.per_scene[0]
    assert a.scene == "a"
    # IoU: TP v1, v3; FP v6, v2, v5; FN B, C (v4 is below the threshold)
    assert _figures(a.per_class["vessel"]["iou"]) == (2, 3, 2)
    # metres: TP v1, v2; FP v6, v3, v5; FN L3, C
    assert _figures(a.per_class["vessel"]["distance"]) == (2, 3, 2)
    m = a.per_class["vessel"]["iou"]
    assert (m.counts.precision, m.counts.recall) == (pytest.approx(0.4), pytest.approx(0.5))
    assert m.counts.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert (m.labels, m.detections_ranked) == (4, 6)
    # AP ranks v4 too: IoU ranking F T T F F T over 4 labels; metres F T F T F T
    assert m.ap == pytest.approx(0.25 * 2 / 3 + 0.25 * 2 / 3 + 0.25 * 0.5)
    assert a.per_class["vessel"]["distance"].ap == pytest.approx(0.375)
    assert _figures(a.per_class["kiln"]["iou"]) == (1, 0, 0) and a.per_class["kiln"]["iou"].ap == 1.0
    assert _figures(a.totals["iou"]) == (3, 3, 2)
    assert a.totals["iou"].ap == pytest.approx((11 / 24 + 1.0) / 2)
    # which detections failed differs between the criteria
    assert sorted(f.score for f in r.false_positives["iou"] if f.scene == "a") == pytest.approx([0.6, 0.8, 0.95])
    assert sorted(f.score for f in r.false_positives["distance"] if f.scene == "a") == pytest.approx([0.6, 0.85, 0.95])


def test_distance_is_in_ground_metres() -> None:
    # v3's centre is 4 pixels = 40 m (x scale factor 0.9996 at the central meridian) from L3's
    near = _case(EvalSettings(distance_m=35.0)).per_scene[0].per_class["vessel"]["distance"]
    far = _case(EvalSettings(distance_m=45.0)).per_scene[0].per_class["vessel"]["distance"]
    assert near.counts.tp == 2 and far.counts.tp == 3
    # IoU threshold: v2's box around B has IoU exactly 0.25
    assert _case(EvalSettings(iou=0.25)).per_scene[0].per_class["vessel"]["iou"].counts.tp == 3
    assert _case(EvalSettings(iou=0.26)).per_scene[0].per_class["vessel"]["iou"].counts.tp == 2


def test_scenes_without_labels_or_detections() -> None:
    r = _case()
    b, c, d = r.per_scene[1:]
    assert _figures(b.per_class["vessel"]["iou"]) == (0, 1, 0)
    assert b.per_class["vessel"]["iou"].ap is None and b.per_class["vessel"]["iou"].counts.precision == 0.0
    assert _figures(c.per_class["kiln"]["distance"]) == (0, 0, 1) and c.per_class["kiln"]["distance"].ap == 0.0
    for crit in ("iou", "distance"):
        assert _figures(d.totals[crit]) == (0, 0, 0)
        assert d.totals[crit].ap is None and d.totals[crit].counts.f1 == 0.0
    doc = r.to_dict()
    assert doc["per_scene"][3]["totals"]["iou"]["mean_ap"] is None
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


def test_pooled_per_class_and_totals() -> None:
    r = _case()
    v = r.per_class["vessel"]["iou"]
    assert _figures(v) == (2, 4, 2)  # scene b's detection adds an FP
    # ranking F T T F F F(b) T over 4 labels
    assert v.ap == pytest.approx(0.25 * 2 / 3 * 2 + 0.25 * 3 / 7)
    k = r.per_class["kiln"]["iou"]
    assert _figures(k) == (1, 0, 1) and k.ap == pytest.approx(0.5)
    assert _figures(r.totals["iou"]) == (3, 4, 3)
    assert r.totals["iou"].ap == pytest.approx((v.ap + k.ap) / 2)
    curve = r.curves["vessel"]["iou"]
    assert curve.recall.tolist() == pytest.approx([0, 0.25, 0.5, 0.5, 0.5, 0.5, 0.75])
    assert list(curve.scores) == sorted(curve.scores, reverse=True)
    assert r.headline()["f1"] == r.totals["iou"].counts.f1


def test_labels_must_cover_every_scene() -> None:
    a = _scene("a")
    with pytest.raises(ValueError, match="no labels entry"):
        evaluate([(a, _dets(a, []))], [], CLASSES, EvalSettings(), 0.5)
    with pytest.raises(ValueError, match="out of range"):
        evaluate([(a, _dets(a, []))], [_labels(a, [(A, 2)])], CLASSES, EvalSettings(), 0.5)


@pytest.mark.parametrize("primary", ["iou", "distance"])
def test_files_are_written_and_agree_with_the_metrics(tmp_path: Path, primary: str) -> None:
    r = _case(EvalSettings(primary=primary))
    out = tmp_path / "eval"
    write_evaluation(r, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no staging left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(EVAL_FILES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(r.to_dict()))
    assert metrics["headline"]["criterion"] == primary
    assert (out / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fp = json.loads((out / "false_positives.geojson").read_text())
    fn = json.loads((out / "false_negatives.geojson").read_text())
    assert fp["type"] == fn["type"] == "FeatureCollection"
    assert len(fp["features"]) == metrics["totals"][primary]["fp"] == 4
    assert len(fn["features"]) == metrics["totals"][primary]["fn"] == 3
    f = fp["features"][0]
    ring = f["geometry"]["coordinates"][0]
    assert f["geometry"]["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
    assert 14.9 < ring[0][0] < 15.1 and 43.2 < ring[0][1] < 43.4  # lon/lat near UTM 33N's origin
    assert set(f["properties"]) == {"class", "score", "scene"}
    assert {g["properties"]["scene"] for g in fn["features"]} == {"a", "c"}
    assert all(set(g["properties"]) == {"class", "scene"} for g in fn["features"])
    missed = {"iou": [0.6, 0.8, 0.95], "distance": [0.6, 0.85, 0.95]}[primary]
    assert sorted(g["properties"]["score"] for g in fp["features"] if g["properties"]["scene"] == "a") == missed


def test_a_failed_write_leaves_earlier_files_and_no_partial_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sitewatch.training.evaluate as ev

    out = tmp_path / "eval"
    write_evaluation(_case(), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(report: EvalReport, path: Path) -> None:
        path.write_bytes(b"\x89PNG half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ev, "_plot_pr", broken)
    with pytest.raises(RuntimeError):
        write_evaluation(_case(EvalSettings(iou=0.9)), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


@pytest.mark.skipif("demo" not in shipped_models(), reason="demo model not built")
def test_cli_evaluates_the_demo_model_on_the_demo_scene(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = tmp_path / "demo"
    main(["demo", "--out", str(demo), "--workers", "2"])
    capsys.readouterr()
    out = tmp_path / "eval"
    # labels as a quoted glob, as train takes them
    args = ["evaluate", "--model", "demo", "--labels", str(demo / "demo-tr*.geojson"), str(demo / "demo-scene.tif"),
            "--out", str(out), "--workers", "2"]
    main(args)
    printed = capsys.readouterr().out
    assert "demo-scene" in printed and f"wrote {out / 'metrics.json'}" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["threshold"] == 0.3 and m["model"]["name"] == "demo"
    for cls, n in (("vessel", 25), ("kiln", 15)):
        for crit in ("iou", "distance"):
            c = m["per_class"][cls][crit]
            assert c["labels"] == n and c["tp"] == n, (cls, crit, c)
            assert c["precision"] >= 0.9 and c["ap"] >= 0.95, (cls, crit, c)
        assert f"{m['per_class'][cls]['iou']['precision']:5.3f}" in printed
    fp = json.loads((out / "false_positives.geojson").read_text())
    assert len(fp["features"]) == m["totals"]["iou"]["fp"]
    assert (out / "detections" / "detections.geojson").is_file()
    assert (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"

    # a second run into the same directory is refused without --overwrite; bad values name their flag
    for extra, code, words in ((["--iou", "0.3"], 5, "--overwrite"), (["--overwrite", "--iou", "0"], 2, "--iou"),
                               (["--overwrite", "--labels", str(demo / "nothing-*.geojson")], 3, "matches no label")):
        with pytest.raises(SystemExit) as exc:
            main([*args, *extra])
        err = capsys.readouterr().err
        assert exc.value.code == code and words in err and len(err.strip().splitlines()) == 1, err


def test_threshold_sweep_pools_classes_and_scenes() -> None:
    report = _case()
    at_half = report.by_threshold["iou"][0.5]
    # at 0.5 the totals are those of the operating threshold (0.5) in the hand-built case
    assert (at_half.tp, at_half.fp, at_half.fn) == _figures(report.totals["iou"])
    # raising the threshold above every score leaves only misses
    top = report.by_threshold["distance"][0.9]
    assert top.tp + top.fp == 1  # v6 (0.95) alone
    t, best = report.best_threshold("iou")
    assert best.f1 == max(c.f1 for c in report.by_threshold["iou"].values())
    assert json.loads(json.dumps(report.to_dict()))["by_threshold"]["iou"]["0.50"]["tp"] == at_half.tp


def test_by_place_counts_an_object_in_two_overlapping_scenes_once() -> None:
    """Scene ``b`` is ``a`` shifted 50 px east: the object at a's column 300 is b's column 250."""
    a = _scene("a")
    b = Scene(name="b", source="/data/b.tif", bands=(), width=1000, height=1000, crs_wkt=UTM33,
              transform=(10.0, 0.0, 500_500.0, 0.0, -10.0, 4_800_000.0), dtype="uint16", nodata=None)
    results = [
        # a: finds the shared object (0.9) and a false alarm (0.8); b: the shared object again (0.7)
        (a, _dets(a, [((300, 300, 310, 310), 0.9, K), ((700, 100, 710, 110), 0.8, K)])),
        # b: the shared object, and the false alarm seen again 1 px off (one false place, not two)
        (b, _dets(b, [((251, 300, 261, 310), 0.7, K), ((651, 100, 661, 110), 0.6, K)])),
    ]
    # labels: the shared object in both scenes, and one only b covers (missed)
    truth = [_labels(a, [((300, 300, 310, 310), K)]), _labels(b, [((250, 300, 260, 310), K), ((900, 900, 910, 910), K)])]
    r = evaluate(results, truth, CLASSES, EvalSettings(distance_m=30.0), threshold=0.5)
    per_scene = r.per_class["kiln"]["distance"]
    assert (per_scene.counts.tp, per_scene.counts.fp, per_scene.counts.fn, per_scene.labels) == (2, 2, 1, 3)
    place = r.places["kiln"]
    assert (place.counts.tp, place.counts.fp, place.counts.fn, place.labels, place.detections) == (1, 1, 1, 2, 2)
    # the sweep: above 0.8 only the shared object is found
    assert place.by_threshold[0.85].as_dict()["fp"] == 0 and place.by_threshold[0.85].as_dict()["tp"] == 1
    assert r.to_dict()["places"]["kiln"]["labels"] == 2
    assert r.places["vessel"].labels == 0
