"""Tests for sitewatch.imagery.detect.outputs: refusing output directories, staging and committing results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import sitewatch.imagery.detect.outputs
from sitewatch.imagery.detect.outputs import RESULT_FILES, Staging, check_out_dir
from sitewatch.imagery.errors import OutputError


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _old_results(out: Path) -> dict[str, bytes]:
    out.mkdir()
    for name in RESULT_FILES:
        (out / name).write_text(f"results of an earlier run: {name}\n")
    return _snapshot(out)


# --- check_out_dir ----------------------------------------------------------------------


def test_new_directory_is_accepted(tmp_path):
    check_out_dir(tmp_path / "run1", overwrite=False)
    assert not (tmp_path / "run1").exists()  # checking creates nothing


def test_empty_directory_is_accepted(tmp_path):
    check_out_dir(tmp_path, overwrite=False)


def test_missing_parents_are_created_when_outputs_are_written(tmp_path):
    out = tmp_path / "no" / "run1"
    check_out_dir(out, overwrite=False)
    assert not (tmp_path / "no").exists()  # checking creates nothing
    staging = Staging(out)
    staging.write_json("run.json", {})
    staging.commit(["run.json"])
    assert (out / "run.json").is_file()


def test_a_file_as_parent_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="parent path is a file") as info:
        check_out_dir(tmp_path / "afile" / "run1", overwrite=False)
    assert "--out" in str(info.value)


def test_a_file_is_refused(tmp_path):
    target = tmp_path / "run1"
    target.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        check_out_dir(target, overwrite=True)


@pytest.mark.parametrize("present", RESULT_FILES)
def test_existing_results_need_overwrite(tmp_path, present):
    (tmp_path / present).write_text("{}")
    with pytest.raises(OutputError, match="--overwrite") as info:
        check_out_dir(tmp_path, overwrite=False)
    assert present in str(info.value) and OutputError.exit_code == 5
    check_out_dir(tmp_path, overwrite=True)


def test_foreign_files_are_refused_even_with_overwrite(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"\xff\xd8")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="holiday.jpg"):
            check_out_dir(tmp_path, overwrite=overwrite)


def test_hidden_and_own_files_are_not_foreign(tmp_path):
    (tmp_path / ".DS_Store").write_text("")
    (tmp_path / "demo-scene.tif").write_text("")
    check_out_dir(tmp_path, overwrite=False, own_files=("demo-scene.tif",))
    with pytest.raises(OutputError):
        check_out_dir(tmp_path, overwrite=False)


# --- Staging ------------------------------------------------------------------------------


def test_staging_is_hidden_beside_out_and_commit_moves_files(tmp_path):
    out = tmp_path / "run1"
    staging = Staging(out)
    assert staging.dir.parent == tmp_path and staging.dir.name.startswith(".run1.")
    staging.write_json("run.json", {"a": 1})
    staging.write_json("detections.geojson", {"type": "FeatureCollection", "features": []})
    staging.write_text("map.html", "<html></html>")
    assert not out.exists()  # nothing is visible before commit

    staging.commit(["detections.geojson", "map.html", "run.json"])

    assert sorted(p.name for p in out.iterdir()) == ["detections.geojson", "map.html", "run.json"]
    assert json.loads((out / "run.json").read_text()) == {"a": 1}
    assert _hidden(tmp_path) == []


def test_commit_puts_run_json_last(tmp_path, monkeypatch):
    out = tmp_path / "run1"
    staging = Staging(out)
    for name in RESULT_FILES:
        staging.write_text(name, name)
    moved: list[str] = []
    real_replace = sitewatch.imagery.detect.outputs.os.replace

    def spy(src, dst):
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(sitewatch.imagery.detect.outputs.os, "replace", spy)
    staging.commit(["run.json", *(n for n in RESULT_FILES if n != "run.json")])  # run.json named first on purpose
    assert moved[-1] == "run.json"
    assert sorted(moved) == sorted(RESULT_FILES)


def test_failing_write_keeps_earlier_results_and_no_staging(tmp_path):
    out = tmp_path / "run1"
    before = _old_results(out)
    staging = Staging(out)
    staging.write_json("detections.geojson", {"type": "FeatureCollection", "features": []})
    staging.path("run.json").mkdir()  # the write of run.json fails with an OSError
    with pytest.raises(OutputError) as info:
        staging.write_json("run.json", {})
    assert str(out / "run.json") in str(info.value)
    staging.discard()
    assert _snapshot(out) == before
    assert _hidden(tmp_path) == []


def test_write_failing_mid_document_keeps_earlier_results(tmp_path):
    out = tmp_path / "run1"
    before = _old_results(out)
    staging = Staging(out)
    with pytest.raises(TypeError):
        staging.write_json("detections.geojson", {"features": [1, 2, object()]})  # half written
    staging.discard()
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_failing_commit_leaves_no_stale_run_json(tmp_path):
    # A rename that fails part-way must not leave the old run.json vouching for new files.
    out = tmp_path / "run1"
    _old_results(out)
    (out / "map.html").unlink()
    (out / "map.html").mkdir()
    (out / "map.html" / "keep").write_text("")  # replacing a non-empty directory fails
    staging = Staging(out)
    for name in RESULT_FILES:
        staging.write_text(name, f"new {name}")
    with pytest.raises(OutputError, match="--out"):
        staging.commit(["detections.geojson", "map.html", "run.json"])
    assert not (out / "run.json").exists()
    assert _hidden(tmp_path) == []


def test_commit_creates_subdirectories(tmp_path):
    out = tmp_path / "run1"
    staging = Staging(out)
    staging.write_bytes("quicklooks/a.png", b"png")
    staging.write_text("run.json", "{}")
    staging.commit(["quicklooks/a.png", "run.json"])
    assert (out / "quicklooks" / "a.png").read_bytes() == b"png" and _hidden(tmp_path) == []


def test_append_needs_a_store_and_excludes_overwrite(tmp_path):
    from sitewatch.imagery.errors import UsageError

    check_out_dir(tmp_path / "new", overwrite=False, append=True)  # no earlier run: a new one
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(OutputError, match="without a candidate store"):
        check_out_dir(tmp_path, overwrite=False, append=True)
    (tmp_path / "candidates.gpkg").write_text("")
    (tmp_path / "notes.txt").write_text("")
    check_out_dir(tmp_path, overwrite=False, append=True)
    with pytest.raises(UsageError, match="choose one"):
        check_out_dir(tmp_path, overwrite=True, append=True)


def test_staging_under_a_file_is_an_output_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        Staging(tmp_path / "afile" / "run1")


# --- the whole write path -----------------------------------------------------------------


def _scene(make_geotiff) -> Path:
    return make_geotiff(64, 64, bands=4, seed=5)


def test_failing_output_write_in_detect_keeps_earlier_results(tmp_path, make_geotiff, tiny_checkpoint, monkeypatch):
    import sitewatch.imagery.detect.report
    from sitewatch.imagery.detect.pipeline import DetectSettings, detect

    scene = _scene(make_geotiff)
    settings = DetectSettings(tile_size=32, overlap=8, score_threshold=0.0, workers=2)
    out = tmp_path / "run1"
    detect([scene], tiny_checkpoint, out, settings)
    before = _snapshot(out)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sitewatch.imagery.detect.report, "render_map_html", broken)
    with pytest.raises(OSError):
        detect([scene], tiny_checkpoint, out, settings, overwrite=True)

    # The earlier results are untouched; the job's records stay (hidden) so that the same
    # command, once there is space, resumes instead of starting over.
    job = {k: v for k, v in _snapshot(out).items() if k.startswith(".sitewatch-job")}
    assert ".sitewatch-job/job.sqlite" in job
    assert {k: v for k, v in _snapshot(out).items() if k not in job} == before
    assert _hidden(tmp_path) == []
    monkeypatch.undo()
    detect([scene], tiny_checkpoint, out, settings, overwrite=True)
    assert not (out / ".sitewatch-job").exists()
    assert _snapshot(out).keys() == before.keys()
    doc = json.loads(before["detections.geojson"])
    run = json.loads(before["run.json"])
    assert len(doc["features"]) == sum(run["detections"].values()) > 0
    assert np.isfinite([f["properties"]["score"] for f in doc["features"]]).all()
