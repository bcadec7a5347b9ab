"""Tests for sitewatch.imagery.detect.pipeline.plan/build_graph: building the Dask graph stays lazy.

Like xarray's ``raise_if_dask_computes``: a scheduler that raises is installed while the
graph is built, so any compute on the client fails the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio.io
import torch
from affine import Affine

from sitewatch.imagery.detect.pipeline import DetectSettings, Plan, build_graph, plan
from sitewatch.imagery.detect.worker import BlockResult, SceneStats
from sitewatch.imagery.errors import InputError, UsageError
from sitewatch.imagery.models.architectures import RawDetections, build_model
from sitewatch.imagery.models.checkpoint import ModelSpec, save_checkpoint
from sitewatch.imagery.models.runtime import OnnxModel
from sitewatch.imagery.scenes.normalise import Normalisation
from sitewatch.imagery.scenes.scene import SceneReader, _row_runs

TILES_PER_TASK = 5
# 200 x 150 with 64-pixel tiles overlapping by 16: 4 x 3 = 12 tiles -> one block of the first 2,
# then the last 2 x 5 tiles in blocks of 5 // 4 = 1 (TileGrid.blocks) = 11 blocks;
# 130 x 70: 3 x 2 = 6 tiles -> 6 blocks of 1.
SCENES = [(200, 150, 12), (130, 70, 6)]


class ComputeError(AssertionError):
    """Raised by the guard scheduler: something computed while the graph was being built."""


@contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    def scheduler(dsk: Any, keys: Any, **kwargs: Any) -> None:
        raise ComputeError(f"a Dask compute of {list(keys)[:3]} ran while building the graph")

    with dask.config.set(scheduler=scheduler):
        yield


@pytest.fixture
def inputs(tmp_path: Path, make_geotiff: Callable[..., Path]) -> tuple[list[Path], Path]:
    scenes = [
        make_geotiff(
            w, h, "EPSG:32633", Affine(10, 0, 500_000 + 5_000 * i, 0, -10, 4_800_000), "uint16", None, 4, seed=i
        )
        for i, (w, h, _) in enumerate(SCENES)
    ]
    torch.manual_seed(0)
    params = {"head_width": 16, "widths": [8, 16, 16, 16]}
    spec = ModelSpec(
        name="graph-test",
        version="0.0.1",
        arch="centernet",
        classes=("vessel", "kiln"),
        bands=("B02", "B03", "B04", "B08"),
        normalisation=Normalisation(),
        arch_params=params,
        tile_size=64,
        overlap=16,
    )
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, spec, build_model("centernet", 4, 2, params))
    return scenes, ckpt


def settings(**changes: Any) -> DetectSettings:
    return DetectSettings(tiles_per_task=TILES_PER_TASK, batch_size=4, workers=1, **changes)


def tasks(graph: list[Any]) -> dict[Any, Any]:
    """Every task of the graph, by key."""
    out: dict[Any, Any] = {}
    for stats, blocks in graph:
        for obj in (stats, *blocks):
            out.update(dict(obj.__dask_graph__()))
    return out


def keys(graph: list[Any]) -> list[tuple[str, list[str]]]:
    return [(stats.key, [b.key for b in blocks]) for stats, blocks in graph]


@contextmanager
def count_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Count pixel reads: SceneReader opens and reads, and any rasterio dataset read."""
    counts = {"SceneReader": 0, "read": 0, "read_tile": 0, "overview": 0, "rasterio": 0}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    with monkeypatch.context() as m:
        m.setattr(SceneReader, "__init__", counted("SceneReader", SceneReader.__init__))
        for name in ("read", "read_tile", "overview"):
            m.setattr(SceneReader, name, counted(name, getattr(SceneReader, name)))
        m.setattr(rasterio.io.DatasetReader, "read", counted("rasterio", rasterio.io.DatasetReader.read))
        yield counts


def _plan_and_build(scenes: list[Path], ckpt: Path, s: DetectSettings) -> tuple[Plan, list[Any]]:
    with raise_if_dask_computes(), dask.config.set({"tokenize.ensure-deterministic": True}):
        p = plan(scenes, ckpt, s)
        return p, build_graph(p)


def test_guard_scheduler_catches_a_compute() -> None:
    # The guard is real: a compute under it fails.
    with raise_if_dask_computes(), pytest.raises(ComputeError):
        dask.delayed(sum)([1, 2]).compute()


def test_building_the_graph_computes_and_reads_nothing(
    inputs: tuple[list[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    scenes, ckpt = inputs
    with count_reads(monkeypatch) as counts:
        p, graph = _plan_and_build(scenes, ckpt, settings())
        assert counts == {"SceneReader": 0, "read": 0, "read_tile": 0, "overview": 0, "rasterio": 0}

        assert [len(g) for g in p.grids] == [n for _, _, n in SCENES]
        assert len(graph) == len(SCENES)
        expected = [1 + len(g.blocks(TILES_PER_TASK)) for g in p.grids]
        assert [1 + len(blocks) for _, blocks in graph] == expected == [12, 7]
        dsk = tasks(graph)
        assert len(dsk) == sum(expected)  # no hidden tasks besides stats and blocks
        for stats, blocks in graph:
            assert str(stats.key).startswith("stats-")
            for b in blocks:
                assert str(b.key).startswith("detect_block-")
                # Each block waits for its own scene's statistics, not another scene's.
                assert stats.key in dict(b.__dask_graph__())
        assert graph[0][0].key not in dict(graph[1][1][0].__dask_graph__())

        # The counters work: running the graph does read windows, inside the tasks. The CNN
        # is stubbed (this test is about reading, and the machine is slow), but tasks still
        # load the checkpoint, read, normalise and batch every tile.
        batches: list[tuple[int, ...]] = []

        def no_objects(
            model: torch.nn.Module, batch: np.ndarray, valid: np.ndarray, threshold: float, *_: object
        ) -> list[RawDetections]:
            assert isinstance(model, OnnxModel)  # the default runtime on the CPU
            batches.append(batch.shape)
            empty = RawDetections(np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64))
            return [empty] * len(batch)

        monkeypatch.setattr("sitewatch.imagery.detect.worker.predict", no_objects)
        threads = torch.get_num_threads()
        try:
            computed = dask.compute(*graph, scheduler="sync")
        finally:
            torch.set_num_threads(threads)  # detect_block sets it per worker
    assert sum(b[0] for b in batches) == sum(n for _, _, n in SCENES)
    assert {b[1:] for b in batches} == {(4, 64, 64)}
    total_tiles = sum(n for _, _, n in SCENES)
    # Each task reads each run of neighbouring tiles in a row as one window (read_tiles).
    runs = sum(len(_row_runs(b)) for g in p.grids for b in g.blocks(TILES_PER_TASK))
    assert counts["read"] == runs < total_tiles and counts["read_tile"] == 0
    assert counts["overview"] == len(SCENES)
    assert counts["SceneReader"] == sum(expected)  # one per task
    assert counts["rasterio"] > 0
    for (stats, blocks), (_, _, n) in zip(computed, SCENES, strict=True):
        assert isinstance(stats, SceneStats)
        assert all(isinstance(b, BlockResult) for b in blocks)
        assert sum(b.tiles_total for b in blocks) == n
        assert all(b.tiles_failed == 0 for b in blocks)


def test_keys_are_deterministic_and_unique(inputs: tuple[list[Path], Path]) -> None:
    scenes, ckpt = inputs
    _, first = _plan_and_build(scenes, ckpt, settings())
    _, second = _plan_and_build(scenes, ckpt, settings())
    assert keys(first) == keys(second)
    flat = [k for stats, blocks in keys(first) for k in (stats, *blocks)]
    assert len(set(flat)) == len(flat)  # a collision would silently merge two tasks


def test_keys_change_with_what_the_results_depend_on(inputs: tuple[list[Path], Path]) -> None:
    # A distributed scheduler may reuse results by key: a key must change when the result would.
    scenes, ckpt = inputs
    _, base = _plan_and_build(scenes, ckpt, settings())
    _, other_threshold = _plan_and_build(scenes, ckpt, settings(score_threshold=0.9))
    (stats, blocks), (stats2, blocks2) = keys(base)[0], keys(other_threshold)[0]
    assert stats == stats2  # statistics do not depend on the threshold
    assert not set(blocks) & set(blocks2)

    save_checkpoint(ckpt, ModelSpec.from_dict(_spec_dict(ckpt)), _other_model())
    _, other_model = _plan_and_build(scenes, ckpt, settings())
    assert not set(keys(base)[0][1]) & set(keys(other_model)[0][1])

    # Another normalisation gives other statistics, so the stats task needs another key.
    fixed = {**_spec_dict(ckpt), "normalisation": Normalisation(method="fixed", scale=1000.0).to_dict()}
    save_checkpoint(ckpt, ModelSpec.from_dict(fixed), _other_model())
    _, other_norm = _plan_and_build(scenes, ckpt, settings())
    assert keys(other_norm)[0][0] != stats


def _spec_dict(ckpt: Path) -> dict[str, Any]:
    raw = torch.load(ckpt, weights_only=True)
    spec: dict[str, Any] = raw["spec"]
    return spec


def _other_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model("centernet", 4, 2, {"head_width": 16, "widths": [8, 16, 16, 16]})


def test_plan_validates_before_any_work(inputs: tuple[list[Path], Path], tmp_path: Path) -> None:
    scenes, ckpt = inputs
    with raise_if_dask_computes():
        with pytest.raises(UsageError, match="given twice"):
            plan([scenes[0], scenes[0]], ckpt, settings())
        with pytest.raises(UsageError, match="overlap"):
            plan(scenes, ckpt, settings(tile_size=64, overlap=64))
        with pytest.raises(InputError, match="no such file"):
            plan([scenes[0], tmp_path / "absent.tif"], ckpt, settings())
