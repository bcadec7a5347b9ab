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
import math
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import dask

from sitewatch.imagery.candidates.sites import site_distances
from sitewatch.imagery.candidates.store import STORE_NAME, CandidateStore, review_count
from sitewatch.imagery.detect.execution import Task, check_scheduler, run_tasks
from sitewatch.imagery.detect.jobs import Job, fingerprint, recorded_fingerprint, scene_signature
from sitewatch.imagery.detect.merge import suppress
from sitewatch.imagery.detect.outputs import check_out_dir
from sitewatch.imagery.detect.report import write_outputs
from sitewatch.imagery.detect.results import DetectSettings, Plan, RunSummary, SceneResult
from sitewatch.imagery.detect.worker import (
    BlockResult,
    SceneStats,
    detect_block,
    empty_detections,
    file_facts,
    load_model,
    scene_stats,
)
from sitewatch.imagery.errors import InputError, OutputError, SitewatchError, UsageError
from sitewatch.imagery.models.checkpoint import ModelSpec
from sitewatch.imagery.models.registry import resolve_model
from sitewatch.imagery.scenes.arrays import chunk_warning, is_dataarray, scene_from_dataarray
from sitewatch.imagery.scenes.georef import ground_pixel_m
from sitewatch.imagery.scenes.inputs import expand_inputs, open_input
from sitewatch.imagery.scenes.scene import Scene, with_nodata
from sitewatch.imagery.scenes.tiling import TileGrid

__all__ = ["DetectSettings", "Plan", "RunSummary", "SceneResult", "Task", "detect", "plan"]

log = logging.getLogger(__name__)

#: What ``detect`` and ``plan`` take as scenes: paths (files, directories, globs, lists, STAC,
#: URLs) and ``xarray.DataArray`` scenes, or one of them alone.
SceneInputs = str | Path | Any | Sequence[Any]


def plan(inputs: SceneInputs, model: str | Path, settings: DetectSettings, *,
         recursive: bool = False, skip_unopenable: bool = False) -> Plan:
    """Resolve the model, expand and open every scene, and build their tile grids.

    Args:
        inputs: scene files, band directories, directories of scenes, globs, list files
            (``@list.txt``), STAC Item/ItemCollection files or URLs (see
            :func:`sitewatch.imagery.scenes.inputs.expand_inputs`), and ``xarray.DataArray``
            scenes (see :func:`sitewatch.imagery.scenes.arrays.scene_from_dataarray`).
        model: a shipped model name or a checkpoint path.
        settings: tiling and inference settings.
        recursive: walk directories of scenes (and ``**`` globs) into subdirectories.
        skip_unopenable: a scene that cannot be opened (not a raster, no CRS, bands that
            do not fit...) is listed in :attr:`Plan.unopened` instead of stopping the plan,
            as long as at least one scene opens.

    Raises:
        SitewatchError: on any problem, before anything is read or written.
    """
    groups = _input_groups(inputs)
    if not groups:
        raise UsageError("no INPUT given: name at least one scene file or band directory")
    ckpt = resolve_model(model)
    loaded = load_model(ckpt)
    s = settings.resolved(loaded.spec)
    scenes = []
    unopened: list[tuple[str, InputError]] = []
    for group in groups:
        if is_dataarray(group):  # an array is opened as given: a bad one is the caller's to fix
            scenes.append(scene_from_dataarray(group, loaded.spec.bands, s.bands))
            continue
        for item in expand_inputs(group, recursive=recursive):
            try:
                scenes.append(with_nodata(open_input(item, loaded.spec.bands, s.bands), s.nodata))
            except InputError as exc:
                if not skip_unopenable:
                    raise
                unopened.append((item.source, exc))
    if not scenes:
        if len(unopened) == 1:
            raise unopened[0][1]
        raise InputError(f"{len(unopened)} inputs", f"none could be opened, nothing was written; the first: {unopened[0][1]}")
    grids = tuple(TileGrid(sc.width, sc.height, s.tile_size, s.overlap) for sc in scenes)  # type: ignore[arg-type]
    warnings = tuple((sc.source, w) for sc in scenes if (w := resolution_warning(sc, loaded.spec)) is not None)
    warnings += tuple((sc.source, w) for sc in scenes if (w := chunk_warning(sc, s.tile_size)) is not None)  # type: ignore[arg-type]
    return Plan(loaded, str(model), tuple(scenes), grids, s, tuple(unopened), warnings)


def _input_groups(inputs: SceneInputs) -> list[Any]:
    """``inputs`` as consecutive runs of paths (expanded together) and single DataArrays, in order."""
    if is_dataarray(inputs) or isinstance(inputs, str | Path):
        inputs = [inputs]  # type: ignore[list-item]
    groups: list[Any] = []
    for item in inputs:  # type: ignore[union-attr]
        if is_dataarray(item):
            groups.append(item)
        elif groups and isinstance(groups[-1], list):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


#: A scene whose ground pixel size differs from the model's by more than this factor (either
#: way) gets a warning: its objects are that much smaller or larger than the model learned.
RESOLUTION_TOLERANCE = 1.5


def resolution_warning(scene: Scene, spec: ModelSpec) -> str | None:
    """A warning naming the scene when its ground pixel size is far from the model's, else ``None``."""
    px = ground_pixel_m(scene.affine, scene.crs_wkt, scene.width / 2, scene.height / 2)
    ratio = px / spec.pixel_size_m
    if not math.isfinite(ratio) or 1 / RESOLUTION_TOLERANCE <= ratio <= RESOLUTION_TOLERANCE:
        return None
    size = f"{spec.pixel_size_m:g}"
    return (f"{scene.source}: pixels are {px:.3g} m on the ground but model {spec.name} was trained on {size} m "
            f"pixels, so objects look {max(ratio, 1 / ratio):.1f}x {'smaller' if ratio > 1 else 'larger'} than it "
            f"learned and may be missed; resample the scene to {size} m (gdalwarp -tr {size} {size} -r bilinear "
            "FILE resampled.tif) or use a model trained at this resolution")


def schedule(p: Plan, recorded_stats: Mapping[int, SceneStats | InputError] | None = None,
             recorded_blocks: set[tuple[int, int]] | None = None) -> list[Task]:
    """The tasks still to run: everything not already recorded by an earlier, interrupted run.

    A scene whose statistics are recorded passes them to its blocks as a value; one whose
    statistics failed schedules nothing (the scene is failed). Computes nothing.
    """
    recorded_stats = recorded_stats or {}
    recorded_blocks = recorded_blocks or set()
    s = p.settings
    spec = p.model.spec
    out: list[Task] = []
    for i, (sc, grid) in enumerate(zip(p.scenes, p.grids, strict=True)):
        # The key covers every input of scene_stats: a scheduler shared by two runs must not
        # hand one model's statistics to another model with a different normalisation.
        stats_token = dask.base.tokenize(sc, spec.normalisation, spec.bands)
        known = recorded_stats.get(i)
        if isinstance(known, InputError):
            continue
        if known is None:
            stats: Any = dask.delayed(scene_stats, pure=True)(sc, spec.normalisation, spec.bands,
                                                              dask_key_name=f"stats-{stats_token}")
            out.append(Task(i, None, 0, stats))
        else:
            stats = known
        # The grid and the settings (tiles per task among them) decide every block's tiles.
        blocks_token = dask.base.tokenize(stats_token, grid, p.model.checksum, s)
        for b, tiles in enumerate(grid.blocks(s.tiles_per_task)):
            if (i, b) in recorded_blocks:
                continue
            task = dask.delayed(detect_block, pure=True)(
                sc, tiles, p.model.path, p.model.checksum, stats, s.batch_size, s.score_threshold, s.workers,
                bool(s.tta), s.runtime, dask_key_name=f"detect_block-{blocks_token}-{b}",
            )
            out.append(Task(i, b, len(tiles), task))
    return out


def build_graph(p: Plan) -> list[Any]:
    """Dask delayed objects, one ``(stats, [block results])`` pair per scene. Computes nothing."""
    tasks = schedule(p)
    return [
        (next(t.delayed for t in tasks if t.scene == i and t.block is None),
         [t.delayed for t in tasks if t.scene == i and t.block is not None])
        for i in range(len(p.scenes))
    ]


def detect(
    inputs: SceneInputs,
    model: str | Path,
    out: str | Path,
    settings: DetectSettings | None = None,
    *,
    overwrite: bool = False,
    scheduler: str | None = None,
    fail_fast: bool = False,
    recursive: bool = False,
    on_tiles: Callable[[int], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    on_scene: Callable[[str], None] | None = None,
    on_dashboard: Callable[[str], None] | None = None,
    own_files: tuple[str, ...] = (),
    append: bool = False,
    site_distance: Mapping[str, float] | None = None,
) -> RunSummary:
    """Detect objects in ``inputs`` with ``model`` and write the run's outputs to ``out``.

    The run is a resumable job (see :mod:`sitewatch.imagery.detect.jobs`): each finished task is recorded in
    ``out/.sitewatch-job`` at once, and calling ``detect`` again with the same inputs, model
    and settings after an interruption runs only what is missing, then writes exactly the
    outputs an uninterrupted run writes.

    Args:
        inputs: scenes: files, band directories, directories of scenes, globs, list files,
            STAC files or URLs (see :func:`sitewatch.imagery.scenes.inputs.expand_inputs`), and
            ``xarray.DataArray`` scenes (dims ``band, y, x``; CRS and transform as rioxarray
            reads them; band names as band coordinates; the scene named by ``da.name``),
            NumPy- or Dask-backed. An array is tiled on the model's grid like a file, each task
            computing only its tiles' windows (see :mod:`sitewatch.imagery.scenes.arrays`). A
            single path or DataArray may be given without a list.
        model: a shipped model name (``vessels-s2``) or a checkpoint path.
        out: run directory for ``candidates.gpkg``, ``detections.geojson``, ``run.json``,
            ``map.html`` and ``quicklooks/``.
        settings: tiling and inference settings; model defaults where ``None``.
        overwrite: replace the results of an earlier run in ``out`` (and an unfinished
            job there with other inputs or settings).
        scheduler: ``threads`` (default), ``processes`` (a local cluster of worker
            processes) or the address of a running Dask distributed scheduler.
        recursive: walk directories of scenes (and ``**`` globs) into subdirectories.
        fail_fast: stop at the first scene or tile that cannot be read (finished work
            stays recorded) instead of reporting it and going on.
        on_tiles: called with the number of tiles each finished task covered (progress);
            on a resumed job, first with the tiles already done.
        on_plan: called once the plan is validated, before work starts.
        on_scene: called with a scene's name once all its tasks are done.
        on_dashboard: called with the Dask dashboard's address on a distributed cluster.
        own_files: files in ``out`` the caller put there (not foreign, not results).
        append: add the scenes to the run already in ``out``: its candidate store keeps
            every detection, site and review, and the other outputs are rewritten to cover
            every scene. A directory without an earlier run gets a new run. A scene already
            in the store is refused.
        site_distance: metres per class within which detections form one site (defaults:
            the store's last run's, else kiln 100, vessel 50; see :mod:`sitewatch.imagery.candidates.sites`).

    Returns:
        A :class:`RunSummary`; scenes that failed are listed in it and in ``run.json``.

    Raises:
        SitewatchError: bad input, model or output location (nothing is written), a scene
            already in the store (``append``), ``overwrite`` of a store holding reviews,
            every scene failed (nothing is written), or a failure with ``fail_fast``.
    """
    started = dt.datetime.now(dt.UTC)
    out = Path(out)
    mode = check_scheduler(scheduler)
    # A directory holding this very job, unfinished, is resumed even if a kill during the
    # final renames left some result files; that is checked once the plan gives the job's key.
    unfinished = recorded_fingerprint(out)
    if unfinished is None:
        check_out_dir(out, overwrite, own_files, append=append)
    store_path = out / STORE_NAME
    if overwrite and (n := review_count(store_path)):
        raise OutputError(
            f"--out {out}: its candidate store holds {n} reviews that --overwrite would discard; "
            "use --append to add scenes and keep them, or export them first (sitewatch export) and remove "
            f"{store_path} yourself"
        )
    site_distances((), site_distance)  # validate before any work
    p = plan(inputs, model, settings or DetectSettings(), recursive=recursive, skip_unopenable=not fail_fast)
    names: dict[str, str] = {}
    for sc in p.scenes:
        if sc.name in names:
            raise UsageError(f"{sc.source}: has the scene name {sc.name!r} of {names[sc.name]}; "
                             "rename one (scene names identify scenes in the outputs)")
        names[sc.name] = sc.source
    if append and store_path.exists():
        CandidateStore(store_path).check_new_scenes(p.scenes)
    key = job_fingerprint(p, append)
    if unfinished is not None and unfinished != key:
        check_out_dir(out, overwrite, own_files, append=append)
    job = Job.open(out, key, discard_other=overwrite)
    if on_plan:
        on_plan(p)
    with closing(job.connect()) as con:
        try:
            files = _run_job(p, job, con, mode, fail_fast, on_tiles, on_scene, on_dashboard)
        except SitewatchError:
            empty = job.is_empty(con)
            con.close()
            if empty:  # e.g. an unreachable scheduler: leave no trace of a job that never started
                job.discard()
            raise
        results = [_scene_result(p, job, con, i, files[i]) for i in range(len(p.scenes))]
    if all(r.failed for r in results):
        job.discard()
        first = results[0]
        if len(results) == 1 and not p.unopened and first.error is not None:
            raise first.error
        reason = first.errors[0] if first.errors else f"{first.scene.source}: no tile could be read"
        n = len(results) + len(p.unopened)
        raise InputError(f"{n} scenes", f"every scene failed, nothing was written; the first: {reason}")
    summary = RunSummary(
        out=out,
        results=results,
        plan=p,
        started=started,
        finished=dt.datetime.now(dt.UTC),
    )
    write_outputs(summary, overwrite=overwrite, append=append, site_distance=site_distance)
    job.discard()
    return summary


def job_fingerprint(p: Plan, append: bool) -> str:
    """What makes two runs the same job: model, scenes in order, and every setting that
    changes detections (not the worker count or the scheduler)."""
    s = asdict(p.settings)
    s.pop("workers")
    return fingerprint({"format": 2, "model": p.model.checksum, "settings": s, "append": append,
                        "scenes": [sc.source for sc in p.scenes]})


def _run_job(p: Plan, job: Job, con: sqlite3.Connection, mode: str, fail_fast: bool,
             on_tiles: Callable[[int], None] | None, on_scene: Callable[[str], None] | None,
             on_dashboard: Callable[[str], None] | None) -> list[dict[str, dict[str, object]]]:
    """Run every task the job has not recorded yet, recording each result as it arrives.

    Returns each scene's file sizes and checksums.
    """
    signatures = {i: scene_signature(sc) for i, sc in enumerate(p.scenes)}
    job.check_scenes(con, signatures)
    recorded_stats: dict[int, SceneStats | InputError] = {}
    for i in job.done_scenes(con):
        st = job.stats(con, i, quicklook=False)
        if st is not None:
            recorded_stats[i] = st
    recorded_blocks = job.done_blocks(con)
    tasks = schedule(p, recorded_stats, recorded_blocks)
    remaining = [0] * len(p.scenes)
    for t in tasks:
        remaining[t.scene] += 1
    if on_tiles and (done := sum(len(g) for g in p.grids) - sum(t.tiles for t in tasks)):
        on_tiles(done)

    def finished(task: Task) -> None:
        remaining[task.scene] -= 1
        if on_tiles and task.tiles:
            on_tiles(task.tiles)
        if on_scene and remaining[task.scene] == 0:
            on_scene(p.scenes[task.scene].name)

    first_done = threading.Event()
    # A scene's statistics are recorded with their quick-look as PNG. The PNG is encoded in a
    # client thread, not here: this callback runs before the blocks waiting on the statistics
    # are handed out, and the encoding (~0.1 s) would hold them back. A run killed before the
    # record is made just computes the (cheap) statistics again when it resumes.
    encoding: dict[int, Future[SceneStats]] = {}

    def record_encoded(wait: bool) -> None:
        for i, fut in list(encoding.items()):
            if wait or fut.done():
                del encoding[i]
                job.record_stats(con, i, signatures[i], fut.result())

    def on_result(task: Task, value: Any) -> None:
        first_done.set()
        record_encoded(wait=False)
        sc = p.scenes[task.scene]
        if task.block is None:
            if isinstance(value, SceneStats):
                encoding[task.scene] = encoder.submit(lambda st: replace(st, quicklook_png=st.png()), value)
            else:
                job.record_stats(con, task.scene, signatures[task.scene], value)
            if fail_fast and isinstance(value, SitewatchError):
                raise value
        else:
            job.record_block(con, task.scene, task.block, value)
            if fail_fast and isinstance(value, BlockResult) and value.errors:
                raise InputError(sc.source, f"{value.errors[0]} (stopped by --fail-fast)")
        finished(task)

    def on_failure(task: Task, exc: BaseException) -> None:
        sc = p.scenes[task.scene]
        error = InputError(sc.source, "Dask workers kept dying while they ran it (distributed.scheduler.allowed-failures); "
                                      "the scene may crash the reader or exhaust a worker's memory")
        if fail_fast:
            raise error
        if task.block is None:
            job.record_stats(con, task.scene, signatures[task.scene], error)
        else:
            n = task.tiles
            job.record_block(con, task.scene, task.block, BlockResult(empty_detections(), n, 0, n, (str(error),)))
        finished(task)

    # File checksums for run.json, computed in a client thread while the tasks run (hashlib
    # releases the GIL): off the tasks' critical path, and the client is otherwise idle. They
    # start once a first task is done, so they do not slow the statistics every block waits for.
    def hash_files() -> list[dict[str, dict[str, object]]]:
        first_done.wait()
        return [{f: file_facts(f) for f in sc.files} for sc in p.scenes]

    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as encoder:
        checksums = pool.submit(hash_files)
        try:
            run_tasks(tasks, on_result, on_failure, scheduler=mode, workers=p.settings.workers or 1, model=p.model,
                      on_dashboard=on_dashboard)
            record_encoded(wait=True)
        finally:
            first_done.set()
        return checksums.result()


def _scene_result(p: Plan, job: Job, con: sqlite3.Connection, i: int,
                  files: dict[str, dict[str, object]]) -> SceneResult:
    """A scene's result, assembled from the job's records and merged across seams."""
    sc, grid = p.scenes[i], p.grids[i]
    res = SceneResult(scene=sc, tiles_total=len(grid))
    stats = job.stats(con, i)
    if not isinstance(stats, SceneStats):
        res.error = stats or InputError(sc.source, "was not processed")
        res.errors.append(str(res.error))
        res.tiles_failed = len(grid)
        return res
    res.stats = replace(stats, files=files)
    parts = []
    for b in job.blocks(con, i):
        res.tiles_skipped += b.tiles_skipped
        res.tiles_failed += b.tiles_failed
        res.errors.extend(b.errors)
        parts.append(b.detections)
    res.detections = suppress(parts, p.settings.nms_iou)
    return res


