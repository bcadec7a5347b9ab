"""Resumable batch jobs: interruptions (Ctrl-C, kill -9), failing scenes, --fail-fast.

A run records each finished task in ``OUT/.sitewatch-job``; the same command run again
goes on from there and must end with exactly the outputs of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import default_sigint

from sitewatch.imagery.detect.jobs import JOB_DIR, recorded_blocks
from sitewatch.imagery.detect.outputs import RESULT_FILES
from sitewatch.imagery.detect.pipeline import DetectSettings, detect
from sitewatch.imagery.errors import InputError, OutputError
from sitewatch.imagery.models.registry import shipped_models
from sitewatch.imagery.synthetic.sentinel2 import make_scene

pytestmark = pytest.mark.skipif("demo" not in shipped_models(), reason="demo model not built")

SITEWATCH = [sys.executable, "-m", "sitewatch.cli"]
# Small tiles, one per task, one worker: a run of a few hundred tasks, slow enough to
# interrupt part-way and quick enough for the suite.
FLAGS = ["--model", "demo", "--tile-size", "64", "--overlap", "16", "--tiles-per-task", "1", "--workers", "1"]
SETTINGS = DetectSettings(tile_size=64, overlap=16, tiles_per_task=1, workers=1)


def features(out: Path) -> list[tuple[object, ...]]:
    """The detections of a run, without their time stamps."""
    doc = json.loads((out / "detections.geojson").read_text())
    return [(f["geometry"]["coordinates"], f["properties"]["class"], f["properties"]["score"],
             f["properties"]["scene"]) for f in doc["features"]]


def store_rows(out: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(out / "candidates.gpkg") as con:
        return con.execute("SELECT scene, class, score, lon, lat FROM detections ORDER BY scene, lon, lat").fetchall()


def start_and_stop(scene: Path, out: Path, sig: int, after_blocks: int) -> subprocess.CompletedProcess[str]:
    """Start ``sitewatch detect`` and send it ``sig`` once ``after_blocks`` tasks are recorded."""
    proc = subprocess.Popen([*SITEWATCH, "detect", str(scene), "--out", str(out), *FLAGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 180
    while recorded_blocks(out) < after_blocks:
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run recorded nothing in 180 s"
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def scene_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic scene and the outputs of one uninterrupted run on it."""
    base = tmp_path_factory.mktemp("job")
    scene = base / "scene.tif"
    make_scene(scene, seed=11, width=640, height=512, n_vessels=14, n_kilns=8)
    ref = base / "reference"
    detect([scene], "demo", ref, SETTINGS)
    assert features(ref), "the reference run found nothing: the comparison would be empty"
    return scene, ref


def test_ctrl_c_then_kill_9_then_resume_gives_the_uninterrupted_outputs(
    scene_and_reference: tuple[Path, Path], tmp_path: Path
) -> None:
    scene, ref = scene_and_reference
    out = tmp_path / "run"
    # Ctrl-C part-way: one clear line, exit 130, no results, the finished work kept.
    first = start_and_stop(scene, out, signal.SIGINT, after_blocks=20)
    assert first.returncode == 130, first.stderr
    assert "interrupted" in first.stderr and "run the same command again" in first.stderr
    assert "Traceback" not in first.stderr
    assert not any((out / f).exists() for f in RESULT_FILES)
    after_ctrl_c = recorded_blocks(out)
    assert after_ctrl_c >= 20

    # kill -9 part-way through the resumed run: no chance to clean up anything.
    second = start_and_stop(scene, out, signal.SIGKILL, after_blocks=after_ctrl_c + 20)
    assert second.returncode == -signal.SIGKILL
    assert not any((out / f).exists() for f in RESULT_FILES)
    after_kill = recorded_blocks(out)
    assert after_kill >= after_ctrl_c + 20

    # The same command finishes the job: only what was missing runs...
    seen: list[int] = []
    summary = detect([scene], "demo", out, SETTINGS, on_tiles=seen.append)
    total = summary.results[0].tiles_total
    assert seen[0] == after_kill  # the first progress report is the work already done
    assert sum(seen) == total and total > after_kill
    # ...and the outputs are exactly those of the uninterrupted run: nothing lost, nothing twice.
    assert features(out) == features(ref)
    assert store_rows(out) == store_rows(ref)
    run = json.loads((out / "run.json").read_text())
    assert run["tiles"]["total"] == total
    assert not (out / JOB_DIR).exists()  # a finished job leaves no records behind


def test_a_finished_job_is_refused_without_overwrite(scene_and_reference: tuple[Path, Path]) -> None:
    scene, ref = scene_and_reference
    proc = subprocess.run([*SITEWATCH, "detect", str(scene), "--out", str(ref), *FLAGS],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == OutputError.exit_code
    assert "already holds results" in proc.stderr and "--overwrite" in proc.stderr


def test_an_unfinished_job_with_other_settings_is_refused(scene_and_reference: tuple[Path, Path], tmp_path: Path) -> None:
    scene, _ = scene_and_reference
    out = tmp_path / "run"
    start_and_stop(scene, out, signal.SIGKILL, after_blocks=3)
    proc = subprocess.run([*SITEWATCH, "detect", str(scene), "--out", str(out), *FLAGS, "--score-threshold", "0.9"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == OutputError.exit_code
    assert proc.stderr.count("\n") == 1 and "unfinished job with other inputs" in proc.stderr
    assert recorded_blocks(out) >= 3  # refused: its records are untouched
    # --overwrite discards the other job and runs this one.
    summary = detect([scene], "demo", out, DetectSettings(**{**SETTINGS.__dict__, "score_threshold": 0.9}),
                     overwrite=True)
    assert summary.results[0].tiles_failed == 0 and not (out / JOB_DIR).exists()


def test_a_changed_scene_is_done_again(scene_and_reference: tuple[Path, Path], tmp_path: Path) -> None:
    scene, ref = scene_and_reference
    mine = tmp_path / "scene.tif"
    make_scene(mine, seed=12, width=640, height=512, n_vessels=14, n_kilns=8)
    out = tmp_path / "run"
    start_and_stop(mine, out, signal.SIGKILL, after_blocks=5)
    # The file is replaced by another scene under the same name before the re-run: its
    # records must not be mixed into the new scene's results.
    mine.write_bytes(scene.read_bytes())
    detect([mine], "demo", out, SETTINGS)
    strip = lambda rows: [r[1:] for r in rows]  # noqa: E731 - the scene name differs
    assert strip(store_rows(out)) == strip(store_rows(ref))


def _truncated(path: Path, good: Path) -> Path:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_failing_scene_does_not_stop_the_batch_and_fail_fast_does(
    scene_and_reference: tuple[Path, Path], tmp_path: Path
) -> None:
    scene, ref = scene_and_reference
    bad = _truncated(tmp_path / "bad.tif", scene)
    out = tmp_path / "batch"
    proc = subprocess.run([*SITEWATCH, "detect", str(scene), str(bad), "--out", str(out), *FLAGS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 6, proc.stderr  # documented: some scenes failed
    assert "bad.tif" in proc.stderr and "Traceback" not in proc.stderr
    run = json.loads((out / "run.json").read_text())
    failed = run["failed_scenes"]
    assert [Path(f["scene"]).name for f in failed] == ["bad.tif"]
    assert failed[0]["errors"] and "bad.tif" in failed[0]["errors"][0]
    assert features(out) == features(ref)  # the good scene's detections, all of them

    out2 = tmp_path / "fast"
    proc = subprocess.run([*SITEWATCH, "detect", str(bad), str(scene), "--out", str(out2), *FLAGS, "--fail-fast"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == InputError.exit_code, proc.stderr
    assert proc.stderr.count("\n") == 1 and "bad.tif" in proc.stderr
    assert not any((out2 / f).exists() for f in RESULT_FILES)


def test_a_kill_during_the_final_renames_still_resumes(
    scene_and_reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene, ref = scene_and_reference
    out = tmp_path / "run"
    real = os.replace
    moved: list[str] = []

    def dies_after_one(src: str, dst: str) -> None:
        if Path(dst).parent == out:  # a rename into the run directory (not within staging)
            if moved:
                raise KeyboardInterrupt  # the process is stopped between two renames
            moved.append(str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        detect([scene], "demo", out, SETTINGS)
    monkeypatch.undo()
    assert moved and Path(moved[0]).exists() and not (out / "run.json").exists()
    # One result file is in place, but the job is unfinished: the same call resumes it
    # (no --overwrite needed) and completes the outputs.
    detect([scene], "demo", out, SETTINGS)
    assert features(out) == features(ref)
    assert not (out / JOB_DIR).exists()


def test_a_folder_of_good_and_broken_scenes(scene_and_reference: tuple[Path, Path], tmp_path: Path) -> None:
    import numpy as np
    import rasterio

    scene, ref = scene_and_reference
    folder = tmp_path / "scenes"
    folder.mkdir()
    (folder / "good.tif").write_bytes(scene.read_bytes())
    (folder / "notes.tif").write_text("not a raster\n")
    _truncated(folder / "cut.tif", scene)
    with rasterio.open(folder / "nocrs.tif", "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16") as dst:
        dst.write(np.ones((4, 64, 64), np.uint16))
    out = tmp_path / "run"
    list_file = tmp_path / "scenes.txt"
    list_file.write_text(f"# the folder, by a glob\n{folder}/*.tif\n")
    proc = subprocess.run([*SITEWATCH, "detect", f"@{list_file}", "--out", str(out), *FLAGS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "scene failed" in line]
    assert sorted(Path(line.split("scene failed: ")[1].split(":")[0]).name for line in errors) == \
        ["cut.tif", "nocrs.tif", "notes.tif"]
    run = json.loads((out / "run.json").read_text())
    assert sorted(Path(f["scene"]).name for f in run["failed_scenes"]) == ["cut.tif", "nocrs.tif", "notes.tif"]
    assert [f[:3] for f in features(out)] == [f[:3] for f in features(ref)]  # the good scene, in full
