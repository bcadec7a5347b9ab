"""The code that runs inside Dask tasks: per-scene statistics and blocks of tiles.

Kept in an importable module (not ``__main__``) so that each worker process keeps one
loaded model in :data:`_MODELS` across tasks instead of unpickling one per task.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from sitewatch.imagery.errors import CheckpointError, SitewatchError
from sitewatch.imagery.models.checkpoint import LoadedModel, bytes_sha256, file_sha256, load_checkpoint
from sitewatch.imagery.models.inference import predict, touches_nodata
from sitewatch.imagery.models.runtime import inference_model
from sitewatch.imagery.scenes.georef import box_corners, pixel_to_map, to_lonlat
from sitewatch.imagery.scenes.normalise import Normalisation, apply, mirror_beyond
from sitewatch.imagery.scenes.quicklook import png_bytes, quicklook_rgb
from sitewatch.imagery.scenes.scene import Scene, SceneReader
from sitewatch.imagery.scenes.tiling import Tile

#: GDAL's block cache defaults to 5% of RAM, and on a large scene it fills to that: a fixed
#: budget keeps peak memory flat whatever the scene size, and still holds the blocks that
#: overlapping tiles share (two block rows of a 20,000-pixel-wide 4-band scene take ~80 MB).
#: Set before GDAL's first read; an explicit GDAL_CACHEMAX in the environment wins.
os.environ.setdefault("GDAL_CACHEMAX", "192")

#: Longer side of the decimated read used for statistics and the quick-look.
OVERVIEW_SIDE = 1024

_MODELS: dict[str, LoadedModel] = {}
_LOCK = threading.Lock()


def get_model(path: str, checksum: str) -> LoadedModel:
    """The model at ``path``, loaded once per process and checked against ``checksum``."""
    with _LOCK:
        lm = _MODELS.get(checksum)
        if lm is None:
            lm = load_checkpoint(path)
            if lm.checksum != checksum:
                raise CheckpointError(f"{path}: changed on disk since the run started; re-run")
            _MODELS[checksum] = lm
        return lm


def load_model(path: str | Path) -> LoadedModel:
    """The checkpoint at ``path``, verified; a file this process loaded before (same bytes,
    by SHA-256) is not unpickled and rebuilt again, so repeated runs in one process (a
    notebook, a batch script) start at once and share one model with their tasks."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError:
        return load_checkpoint(p)  # its own message: no such file, a directory, not readable
    checksum = bytes_sha256(data)
    preload_model(data, checksum, str(p))
    with _LOCK:
        lm = _MODELS[checksum]
    return lm if lm.path == str(p) else replace(lm, path=str(p))


def preload_model(data: bytes, checksum: str, path: str) -> None:
    """Put the checkpoint ``data`` (the bytes of ``path``) in this process's model cache."""
    with _LOCK:
        if checksum not in _MODELS:
            lm = load_checkpoint(path, data)
            if lm.checksum != checksum:
                raise CheckpointError(f"{path}: the bytes sent to this worker do not match their checksum")
            _MODELS[checksum] = lm


@dataclass(frozen=True)
class SceneStats:
    """Per-scene facts gathered by one decimated read."""

    lo: np.ndarray
    hi: np.ndarray
    quicklook: np.ndarray
    quicklook_scale: float
    valid_fraction: float
    #: Size and SHA-256 per file (:func:`file_facts`); the pipeline hashes the files beside the
    #: tasks and fills this in, so the statistics task that blocks wait for does no hashing.
    files: dict[str, dict[str, object]] = field(default_factory=dict)
    #: ``quicklook`` encoded as PNG, once, for the job record, the quick-look file and the map
    #: (empty: encode it where needed). The statistics task leaves it empty: every block
    #: waits for that task, so the client encodes the PNG when it records the result.
    quicklook_png: bytes = b""

    def png(self) -> bytes:
        """The quick-look as PNG."""
        return self.quicklook_png or png_bytes(self.quicklook)


def file_facts(path: str) -> dict[str, object]:
    """Size and checksum of a local file; remote files (GDAL /vsi paths) are not downloaded for a checksum."""
    if path.startswith("/vsi"):
        return {"bytes": None, "sha256": None, "remote": True}
    try:
        return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    except OSError as exc:  # gone or unreadable since it was opened: say so in run.json
        return {"bytes": None, "sha256": None, "error": exc.strerror or str(exc)}


def scene_stats(scene: Scene, norm: Normalisation, band_names: tuple[str, ...]) -> SceneStats | SitewatchError:
    """Normalisation statistics and quick-look (not checksums); errors are returned, not raised."""
    try:
        with SceneReader(scene) as reader:
            ov, valid, factor = reader.overview(OVERVIEW_SIDE)
        lo, hi = norm.scene_stats(ov, valid)
        ql = quicklook_rgb(apply(ov, lo, hi), band_names, valid=valid)
        return SceneStats(lo, hi, ql, factor, float(valid.mean()))
    except SitewatchError as exc:
        return exc


def empty_detections() -> dict[str, np.ndarray]:
    """Detection arrays with no rows."""
    return {
        "boxes": np.zeros((0, 4)),
        "scores": np.zeros(0, np.float32),
        "labels": np.zeros(0, np.int64),
        "map_boxes": np.zeros((0, 4)),
        "corners_lonlat": np.zeros((0, 4, 2)),
        "centre_lonlat": np.zeros((0, 2)),
    }


@dataclass(frozen=True)
class BlockResult:
    """Detections of one block of tiles (scene pixels and map coordinates) and tile counts."""

    detections: dict[str, np.ndarray]
    tiles_total: int
    tiles_skipped: int = 0
    tiles_failed: int = 0
    errors: tuple[str, ...] = field(default_factory=tuple)


def georeference(scene: Scene, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Scene-pixel boxes to map-coordinate boxes and WGS84 corners and centres."""
    if len(boxes) == 0:
        return empty_detections()
    cols, rows = box_corners(boxes)
    mx, my = pixel_to_map(scene.affine, cols, rows)
    lon, lat = to_lonlat(scene.crs_wkt, mx.ravel(), my.ravel())
    ccx, ccy = pixel_to_map(scene.affine, (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2)
    clon, clat = to_lonlat(scene.crs_wkt, ccx, ccy)
    return {
        "boxes": boxes,
        "scores": scores,
        "labels": labels,
        "map_boxes": np.stack([mx.min(1), my.min(1), mx.max(1), my.max(1)], axis=1),
        "corners_lonlat": np.stack([lon.reshape(-1, 4), lat.reshape(-1, 4)], axis=2),
        "centre_lonlat": np.stack([clon, clat], axis=1),
    }


def in_core(tile: Tile, boxes: np.ndarray) -> np.ndarray:
    """Detections whose centre (in scene pixels) lies in the tile's core."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (
        (cx >= tile.core_col_start) & (cx < tile.core_col_stop) & (cy >= tile.core_row_start) & (cy < tile.core_row_stop)
    )


def worker_torch_threads(workers: int) -> int:
    """Threads each task's model may use: the cores over the tasks running at once.

    Inside a distributed worker the worker's own thread count decides, since the client's
    ``--workers`` says nothing about a remote machine.
    """
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):  # not in a distributed worker
        nthreads = workers
    return max(1, (os.cpu_count() or 1) // max(nthreads, 1))


def detect_block(
    scene: Scene,
    tiles: tuple[Tile, ...],
    model_path: str,
    checksum: str,
    stats: SceneStats | SitewatchError,
    batch_size: int,
    score_threshold: float,
    workers: int,
    tta: bool = False,
    runtime: str = "torch",
) -> BlockResult:
    """Read, normalise and detect on a block of tiles; per-tile read failures are counted."""
    if isinstance(stats, SitewatchError):
        return BlockResult(empty_detections(), len(tiles), tiles_failed=len(tiles))
    threads = worker_torch_threads(workers)
    torch.set_num_threads(threads)
    lm = get_model(model_path, checksum)
    skipped = failed = 0
    errors: list[str] = []
    kept_boxes, kept_scores, kept_labels = [], [], []
    # Tiles are normalised straight into one batch buffer, reused batch after batch.
    size = tiles[0].size if tiles else 0
    batch = np.empty((batch_size, len(scene.bands), size, size), dtype=np.float32)
    batch_valid = np.empty((batch_size, size, size), dtype=bool)
    pending: list[Tile] = []
    margin = lm.spec.nodata_margin_px
    mirror = lm.spec.edge_padding == "mirror"

    def flush() -> None:
        n = len(pending)
        dets = predict(net, batch[:n], batch_valid[:n], score_threshold, tta, lm.spec.max_box_px)
        for k, (tile, det) in enumerate(zip(pending, dets, strict=True)):
            b = det.boxes + np.array([tile.col_off, tile.row_off] * 2, dtype=float)
            keep = in_core(tile, b)
            if margin > 0 and keep.any():
                keep &= ~touches_nodata(det.boxes, _scene_nodata(batch_valid[k], tile, scene), margin)
            kept_boxes.append(b[keep])
            kept_scores.append(det.scores[keep])
            kept_labels.append(det.labels[keep])
        pending.clear()

    with inference_model(lm.model, checksum, runtime, threads) as net, SceneReader(scene, shared=True) as reader:
        for tile, read in reader.read_tiles(tiles):
            if isinstance(read, SitewatchError):
                failed += 1
                errors.append(str(read))
                continue
            data, valid = read
            if not valid.any():
                skipped += 1
                continue
            k = len(pending)
            apply(data, stats.lo, stats.hi, valid, out=batch[k])
            if mirror:
                mirror_padding(batch[k], *tile.clipped(scene.width, scene.height)[2:])
            batch_valid[k] = valid
            pending.append(tile)
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    if kept_boxes:
        dets = georeference(scene, np.concatenate(kept_boxes), np.concatenate(kept_scores), np.concatenate(kept_labels))
    else:
        dets = empty_detections()
    return BlockResult(dets, len(tiles), skipped, failed, tuple(errors))


def _scene_nodata(valid: np.ndarray, tile: Tile, scene: Scene) -> np.ndarray:
    """A tile's no-data mask within the scene: the padding beyond the scene's edge is left out."""
    _, _, w, h = tile.clipped(scene.width, scene.height)
    nodata = np.zeros_like(valid)
    nodata[:h, :w] = ~valid[:h, :w]
    return nodata


def mirror_padding(tile: np.ndarray, width: int, height: int) -> None:
    """Fill a ``(bands, size, size)`` tile's padding past the scene's right and bottom edges, in place,
    with the scene's pixels mirrored at the edge.

    Zero padding draws a hard edge along the scene's border, which small-object models take for
    objects (a kiln model fired on beaches cut by a scene's edge); a mirror continues the ground.
    The padding stays invalid, so nothing is detected in it.
    """
    size_h, size_w = tile.shape[1:]
    mirror_beyond(tile, 0, 0, min(width, size_w), min(height, size_h))
