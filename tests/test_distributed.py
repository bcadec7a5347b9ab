"""``scheduler=ADDRESS``: the same graph on a real Dask distributed cluster of processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed import LocalCluster

from imagery.pipeline import DetectSettings, detect
from imagery.registry import shipped_models
from imagery.synthetic import make_scene

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
