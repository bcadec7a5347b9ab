"""``scheduler=ADDRESS``: the same graph on a real Dask distributed cluster of processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from sitewatch.imagery.detect.jobs import recorded_blocks
from sitewatch.imagery.detect.pipeline import DetectSettings, detect
from sitewatch.imagery.models.registry import resolve_model, shipped_models
from sitewatch.imagery.synthetic.sentinel2 import make_scene

SITEWATCH = [sys.executable, "-m", "sitewatch.cli"]


def demo_checkpoint() -> Path:
    return Path(resolve_model("demo"))


pytestmark = pytest.mark.skipif("demo" not in shipped_models(), reason="demo model not built")


def test_cluster_gives_the_same_detections_as_threads(tmp_path: Path) -> None:
    scene = tmp_path / "s.tif"
    make_scene(scene, seed=5, width=384, height=320, n_vessels=8, n_kilns=5)
    settings = DetectSettings(tiles_per_task=2, workers=2)
    seen: list[int] = []
    local = detect([scene], "demo", tmp_path / "threads", settings, on_tiles=seen.append)
    assert sum(seen) == local.results[0].tiles_total == 4
    seen.clear()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = detect([scene], "demo", tmp_path / "cluster", settings, scheduler=cluster.scheduler_address,
                        on_tiles=seen.append)
    assert sum(seen) == 4
    a = json.loads((tmp_path / "threads" / "detections.geojson").read_text())["features"]
    b = json.loads((tmp_path / "cluster" / "detections.geojson").read_text())["features"]
    assert len(a) == len(b) > 0
    strip = lambda f: (f["geometry"], f["properties"]["class"], f["properties"]["score"])  # noqa: E731
    assert [strip(f) for f in a] == [strip(f) for f in b]
    assert remote.counts() == local.counts()


# --- lost workers ------------------------------------------------------------------------

# One tile per task, so the job has enough tasks to lose a worker part-way through.
KILL_SETTINGS = DetectSettings(tile_size=64, overlap=16, tiles_per_task=1, workers=2)
KILL_FLAGS = ["--tile-size", "64", "--overlap", "16", "--tiles-per-task", "1", "--workers", "2"]


@pytest.fixture(scope="module")
def kill_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[object, ...]]]:
    """A scene and its detections from a local threads run (the reference)."""
    base = tmp_path_factory.mktemp("kill")
    scene = base / "scene.tif"
    make_scene(scene, seed=21, width=640, height=448, n_vessels=12, n_kilns=6)
    detect([scene], "demo", base / "threads", KILL_SETTINGS)
    ref = _features(base / "threads")
    assert ref, "the reference run found nothing: the comparison would be empty"
    return scene, ref


def _features(out: Path) -> list[tuple[object, ...]]:
    doc = json.loads((out / "detections.geojson").read_text())
    return [(f["geometry"]["coordinates"], f["properties"]["class"], f["properties"]["score"]) for f in doc["features"]]


def test_a_worker_killed_mid_job_on_a_local_cluster_does_not_fail_it(
    kill_scene: tuple[Path, list[tuple[object, ...]]], tmp_path: Path
) -> None:
    scene, ref = kill_scene
    # A private copy of the model, moved away once work has started: a worker restarted
    # after the kill must get the weights from the cluster (the worker plugin), not the path.
    model = tmp_path / "model.pt"
    shutil.copy(demo_checkpoint(), model)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        assert len(pids) == 2
        done: list[int] = []
        killed: list[int] = []
        dashboards: list[str] = []

        def on_tiles(n: int) -> None:
            done.append(n)
            if len(done) == 10 and not killed:
                model.rename(tmp_path / "moved.pt")
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        summary = detect([scene], model, tmp_path / "run", KILL_SETTINGS, scheduler=cluster.scheduler_address,
                         on_tiles=on_tiles, on_dashboard=dashboards.append)
        assert killed, "the job finished before a worker could be killed"
        # The nanny restarted the killed worker; the job went on and lost nothing.
        assert pids[0] not in client.run(os.getpid).values()
        loaded = client.run(lambda: sorted(__import__("sitewatch.imagery.detect.worker", fromlist=["_MODELS"])._MODELS))
        assert all(v == [summary.plan.model.checksum] for v in loaded.values())
    assert sum(done) == summary.results[0].tiles_total and summary.results[0].tiles_failed == 0
    assert _features(tmp_path / "run") == ref
    assert dashboards and dashboards[0].startswith("http")


def test_a_worker_killed_on_a_separately_started_cluster_does_not_fail_the_job(
    kill_scene: tuple[Path, list[tuple[object, ...]]], tmp_path: Path
) -> None:
    scene, ref = kill_scene
    dask_cli = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker_cli = [sys.executable, "-m", "distributed.cli.dask_worker"]
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([*dask_cli, "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):  # no nanny: a killed worker stays dead, and its tasks must move
            procs.append(subprocess.Popen([*worker_cli, address, "--nthreads", "1", "--no-nanny", "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        out = tmp_path / "run"
        run = subprocess.Popen([*SITEWATCH, "detect", str(scene), "--model", "demo", "--out", str(out),
                                "--scheduler", address, *KILL_FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        deadline = time.monotonic() + 180
        while recorded_blocks(out) < 10:
            assert run.poll() is None, f"the job ended before a worker could be killed: {run.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        procs[1].kill()
        stdout, stderr = run.communicate(timeout=300)
        assert procs[1].wait(timeout=10) == -signal.SIGKILL
        assert run.returncode == 0, stderr
        assert _features(out) == ref
        record = json.loads((out / "run.json").read_text())
        assert record["tiles"]["failed"] == 0
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


def test_scheduler_processes_starts_a_local_cluster(kill_scene: tuple[Path, list[tuple[object, ...]]],
                                                    tmp_path: Path) -> None:
    scene, ref = kill_scene
    links: list[str] = []
    summary = detect([scene], "demo", tmp_path / "run", KILL_SETTINGS, scheduler="processes", on_dashboard=links.append)
    assert summary.results[0].tiles_failed == 0
    assert _features(tmp_path / "run") == ref
    assert links and links[0].startswith("http://")  # the dashboard of the cluster it started
