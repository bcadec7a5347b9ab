"""``detect``: scenes -> Dask tile tasks -> CNN -> georeferenced, seam-merged detections.

The client only opens scenes' metadata and builds the graph. Each scene gets one
*stats* task (a decimated read: per-band normalisation, a quick-look, file checksums, and
an integrity check) and one task per block of tiles, which reads its windows, runs the
model (loaded once per worker process), keeps the detections whose centre lies in the
tile's core, and georeferences them. The client merges per scene with class-aware
suppression in map coordinates and writes the outputs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import dask
import numpy as np

from imagery.checkpoint import LoadedModel, ModelSpec, load_checkpoint
from imagery.errors import InputError, OutputError, SitewatchError, UsageError
from imagery.merge import suppress
from imagery.outputs import check_out_dir
from imagery.registry import resolve_model
from imagery.report import write_outputs
from imagery.scene import Scene, open_scene
from imagery.sites import site_distances
from imagery.store import STORE_NAME, CandidateStore, review_count
from imagery.tiling import TileGrid
from imagery.worker import BlockResult, SceneStats, detect_block, scene_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectSettings:
    """Settings of a detection run; ``None`` means "the model's default"."""

    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    score_threshold: float | None = None
    workers: int | None = None
    bands: tuple[str, ...] | None = None
    tiles_per_task: int = 16
    nms_iou: float = 0.4
    tta: bool | None = None

    def resolved(self, spec: ModelSpec) -> DetectSettings:
        """Fill model defaults and validate.

        Raises:
            UsageError: a value is out of range.
        """
        s = replace(
            self,
            tile_size=self.tile_size if self.tile_size is not None else spec.tile_size,
            overlap=self.overlap if self.overlap is not None else spec.overlap,
            score_threshold=self.score_threshold if self.score_threshold is not None else spec.score_threshold,
            workers=self.workers if self.workers is not None else (os.cpu_count() or 1),
            tta=self.tta if self.tta is not None else spec.tta,
        )
        assert s.tile_size is not None and s.overlap is not None and s.score_threshold is not None  # noqa: S101
        if s.tile_size < 32 or s.tile_size > 4096:
            raise UsageError(f"--tile-size {s.tile_size}: use a tile size between 32 and 4096 pixels")
        if not 0 <= s.overlap < s.tile_size:
            raise UsageError(f"--overlap {s.overlap}: must be at least 0 and smaller than --tile-size ({s.tile_size})")
        if s.batch_size < 1:
            raise UsageError(f"--batch-size {s.batch_size}: must be at least 1")
        if not 0.0 <= s.score_threshold <= 1.0:
            raise UsageError(f"--score-threshold {s.score_threshold}: must be between 0 and 1")
        if s.workers is not None and s.workers < 1:
            raise UsageError(f"--workers {s.workers}: must be at least 1")
        if s.tiles_per_task < 1:
            raise UsageError(f"tiles per task {s.tiles_per_task}: must be at least 1")
        return s


@dataclass
class SceneResult:
    """What one scene produced."""

    scene: Scene
    stats: SceneStats | None = None
    detections: dict[str, np.ndarray] = field(default_factory=dict)
    tiles_total: int = 0
    tiles_skipped: int = 0
    tiles_failed: int = 0
    errors: list[str] = field(default_factory=list)
    error: SitewatchError | None = None

    @property
    def failed(self) -> bool:
        """The scene produced nothing usable."""
        return self.stats is None or (self.tiles_total > 0 and self.tiles_failed == self.tiles_total)


@dataclass(frozen=True)
class Plan:
    """Everything checked before any work starts: model, scenes, grids, settings."""

    model: LoadedModel
    model_ref: str
    scenes: tuple[Scene, ...]
    grids: tuple[TileGrid, ...]
    settings: DetectSettings


def plan(inputs: Sequence[str | Path], model: str | Path, settings: DetectSettings) -> Plan:
    """Resolve the model, open and validate every scene, and build their tile grids.

    Raises:
        SitewatchError: on any problem, before anything is read or written.
    """
    if not inputs:
        raise UsageError("no INPUT given: name at least one scene file or band directory")
    ckpt = resolve_model(model)
    loaded = load_checkpoint(ckpt)
    s = settings.resolved(loaded.spec)
    scenes = []
    seen: set[str] = set()
    for item in inputs:
        sc = open_scene(item, loaded.spec.bands, s.bands)
        key = str(Path(sc.source).resolve())
        if key in seen:
            raise UsageError(f"{item}: given twice; name each scene once")
        seen.add(key)
        scenes.append(sc)
    grids = tuple(TileGrid(sc.width, sc.height, s.tile_size, s.overlap) for sc in scenes)  # type: ignore[arg-type]
    return Plan(loaded, str(model), tuple(scenes), grids, s)


def build_graph(p: Plan) -> list[Any]:
    """Dask delayed objects, one ``(stats, [block results])`` pair per scene. Computes nothing."""
    s = p.settings
    spec = p.model.spec
    out = []
    for sc, grid in zip(p.scenes, p.grids, strict=True):
        # The key covers every input of scene_stats: a scheduler shared by two runs must not
        # hand one model's statistics to another model with a different normalisation.
        stats_key = f"stats-{dask.base.tokenize(sc, spec.normalisation, spec.bands)}"
        stats = dask.delayed(scene_stats, pure=True)(sc, spec.normalisation, spec.bands, dask_key_name=stats_key)
        blocks = [
            dask.delayed(detect_block, pure=True)(
                sc, tiles, p.model.path, p.model.checksum, stats, s.batch_size, s.score_threshold, s.workers, bool(s.tta),
                dask_key_name=f"detect_block-{dask.base.tokenize(sc, tiles, p.model.checksum, s)}",
            )
            for tiles in grid.blocks(s.tiles_per_task)
        ]
        out.append((stats, blocks))
    return out


def _run_graph(graph: list[Any], workers: int, scheduler: str | None, on_tiles: Callable[[int], None] | None) -> list[Any]:
    """Compute ``build_graph``'s output; returns ``(stats, [block results])`` per scene."""
    flat = [task for stats, blocks in graph for task in (stats, *blocks)]
    if scheduler:
        results = _compute_distributed(flat, scheduler, on_tiles)
    else:
        from dask.callbacks import Callback

        class _Progress(Callback):  # type: ignore[misc]
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:  # noqa: A002
                if on_tiles and isinstance(result, BlockResult):
                    on_tiles(result.tiles_total)

        with _Progress():
            results = list(dask.compute(*flat, scheduler="threads", num_workers=workers))
    out, i = [], 0
    for _, blocks in graph:
        out.append((results[i], results[i + 1 : i + 1 + len(blocks)]))
        i += 1 + len(blocks)
    return out


def _compute_distributed(flat: list[Any], scheduler: str, on_tiles: Callable[[int], None] | None) -> list[Any]:
    from distributed import Client, as_completed

    try:
        client = Client(scheduler)
    except (OSError, ValueError) as exc:  # unreachable (OSError after the timeout) or malformed
        raise UsageError(
            f"--scheduler {scheduler}: cannot connect ({str(exc).strip().splitlines()[0][:160]}); "
            "start a scheduler (dask scheduler) or leave out --scheduler to use local threads"
        ) from None
    with client:
        log.info("Dask dashboard: %s", client.dashboard_link)
        futures = client.compute(flat)
        for fut in as_completed(futures):
            if on_tiles and fut.status == "finished":
                r = fut.result()
                if isinstance(r, BlockResult):
                    on_tiles(r.tiles_total)
        return list(client.gather(futures))


def detect(
    inputs: Sequence[str | Path],
    model: str | Path,
    out: str | Path,
    settings: DetectSettings | None = None,
    *,
    overwrite: bool = False,
    scheduler: str | None = None,
    on_tiles: Callable[[int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    own_files: tuple[str, ...] = (),
    append: bool = False,
    site_distance: Mapping[str, float] | None = None,
) -> RunSummary:
    """Detect objects in ``inputs`` with ``model`` and write the run's outputs to ``out``.

    Args:
        inputs: scene files, or directories of single-band files (one scene each).
        model: a shipped model name (``vessels-s2``) or a checkpoint path.
        out: run directory for ``candidates.gpkg``, ``detections.geojson``, ``run.json``,
            ``map.html`` and ``quicklooks/``.
        settings: tiling and inference settings; model defaults where ``None``.
        overwrite: replace the results of an earlier run in ``out``.
        scheduler: address of a running Dask distributed scheduler; local threads if ``None``.
        on_tiles: called with the number of tiles each finished task covered (progress).
        on_plan: called once the plan is validated, before work starts.
        own_files: files in ``out`` the caller put there (not foreign, not results).
        append: add the scenes to the run already in ``out``: its candidate store keeps
            every detection, site and review, and the other outputs are rewritten to cover
            every scene. A directory without an earlier run gets a new run. A scene already
            in the store is refused.
        site_distance: metres per class within which detections form one site (defaults:
            the store's last run's, else kiln 100, vessel 50; see :mod:`imagery.sites`).

    Returns:
        A :class:`RunSummary`; scenes that failed are listed in it and in ``run.json``.

    Raises:
        SitewatchError: bad input, model or output location (nothing is written), a scene
            already in the store (``append``), ``overwrite`` of a store holding reviews, or
            every scene failed (nothing is written).
    """
    started = dt.datetime.now(dt.UTC)
    out = Path(out)
    check_out_dir(out, overwrite, own_files, append=append)
    store_path = out / STORE_NAME
    if overwrite and (n := review_count(store_path)):
        raise OutputError(
            f"--out {out}: its candidate store holds {n} reviews that --overwrite would discard; "
            "use --append to add scenes and keep them, or export them first (sitewatch export) and remove "
            f"{store_path} yourself"
        )
    site_distances((), site_distance)  # validate before any work
    p = plan(inputs, model, settings or DetectSettings())
    names: dict[str, str] = {}
    for sc in p.scenes:
        if sc.name in names:
            raise UsageError(f"{sc.source}: has the scene name {sc.name!r} of {names[sc.name]}; "
                             "rename one (scene names identify scenes in the outputs)")
        names[sc.name] = sc.source
    if append and store_path.exists():
        CandidateStore(store_path).check_new_scenes(p.scenes)
    if on_plan:
        on_plan(p)
    graph = build_graph(p)
    computed = _run_graph(graph, p.settings.workers or 1, scheduler, on_tiles)
    results = []
    for sc, grid, (stats, blocks) in zip(p.scenes, p.grids, computed, strict=True):
        res = SceneResult(scene=sc, tiles_total=len(grid))
        if isinstance(stats, SitewatchError):
            res.error = stats
            res.errors.append(str(stats))
            res.tiles_failed = len(grid)
        else:
            res.stats = stats
            res.tiles_skipped = sum(b.tiles_skipped for b in blocks)
            res.tiles_failed = sum(b.tiles_failed for b in blocks)
            res.errors.extend(e for b in blocks for e in b.errors)
            res.detections = suppress([b.detections for b in blocks], p.settings.nms_iou)
        results.append(res)
    if all(r.failed for r in results):
        first = results[0]
        if len(results) == 1 and first.error is not None:
            raise first.error
        reason = first.errors[0] if first.errors else f"{first.scene.source}: no tile could be read"
        raise InputError(
            f"{len(results)} scenes", f"every scene failed, nothing was written; the first: {reason}"
        )
    summary = RunSummary(
        out=out,
        results=results,
        plan=p,
        started=started,
        finished=dt.datetime.now(dt.UTC),
    )
    write_outputs(summary, overwrite=overwrite, append=append, site_distance=site_distance)
    return summary


@dataclass
class RunSummary:
    """The outcome of :func:`detect`."""

    out: Path
    results: list[SceneResult]
    plan: Plan
    started: dt.datetime
    finished: dt.datetime

    @property
    def failed_scenes(self) -> list[SceneResult]:
        """Scenes that produced nothing."""
        return [r for r in self.results if r.failed]

    def counts(self) -> dict[str, int]:
        """Detections per class over all scenes."""
        out: dict[str, int] = {c: 0 for c in self.plan.model.spec.classes}
        for r in self.results:
            if r.detections and len(r.detections["scores"]):
                for c in r.detections["labels"]:
                    out[self.plan.model.spec.classes[int(c)]] += 1
        return out

    def settings_dict(self) -> dict[str, Any]:
        """The resolved settings as plain data."""
        d = asdict(self.plan.settings)
        d["bands"] = list(self.plan.settings.bands) if self.plan.settings.bands else None
        return d
