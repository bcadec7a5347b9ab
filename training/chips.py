"""Training chips: windows around labels and background windows, read in parallel with Dask.

Windows come from the same readers, normalisation and tile grid as ``detect``:

* one *object* window per labelled object (objects already well inside another object
  window share it), and one per known non-object (rejected review candidates);
* up to ``negatives_per_scene`` *background* windows: tiles of the scene's tile grid
  drawn at random;
* for validation, every tile of the validation area (whole scenes, or blocks).

Each window is ``window`` pixels square, larger than the training chip, so that the
sampler can shift and rescale a chip inside it. Pixels of validation blocks are masked
out of training windows, so nothing leaks from validation into training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from sitewatch.imagery.detect.worker import SceneStats, scene_stats
from sitewatch.imagery.errors import SitewatchError
from sitewatch.imagery.scenes.normalise import Normalisation, apply, mirror_beyond
from sitewatch.imagery.scenes.scene import Scene, SceneReader
from sitewatch.imagery.scenes.tiling import Tile, TileGrid
from sitewatch.training.labels import SceneLabels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A square window of one scene, in the scene's pixels (may reach past its edges)."""

    scene: int
    col_off: int
    row_off: int
    size: int
    #: ``object``, ``hard`` (a known non-object), ``background`` or ``validation``.
    kind: str
    #: For validation tiles: the tile's core ``(col0, row0, col1, row1)`` in scene pixels.
    core: tuple[int, int, int, int] | None = None
    #: The points this window was read for, ``(col, row, class)`` in scene pixels: each
    #: labelled object (or known non-object, class -1) is the anchor of exactly one window.
    anchors: tuple[tuple[float, float, int], ...] = ()


@dataclass
class Chip:
    """A window read and normalised, with the labels whose centre lies in it (window pixels)."""

    window: Window
    data: np.ndarray = field(repr=False)
    valid: np.ndarray = field(repr=False)
    boxes: np.ndarray
    labels: np.ndarray
    #: ``(n, 3)`` points the sampler centres chips on, ``col, row, class`` in window pixels:
    #: the window's objects (object windows) or non-objects (hard windows, class -1).
    anchors: np.ndarray
    #: Bands the scene has no file for (a boolean per band), or ``None`` when it has all.
    missing: np.ndarray | None = None


@dataclass(frozen=True)
class Region:
    """Which pixels of a scene belong to validation: all, none, or a block mask."""

    #: ``(rows, cols)`` boolean grid of blocks; ``None`` with ``all_val`` deciding.
    blocks: np.ndarray | None
    block_px: float
    all_val: bool

    def is_val(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Whether scene pixels ``(col, row)`` are in the validation area."""
        cols, rows = np.asarray(cols, float), np.asarray(rows, float)
        if self.blocks is None:
            return np.full(cols.shape, self.all_val)
        bi = np.clip((rows // self.block_px).astype(int), 0, self.blocks.shape[0] - 1)
        bj = np.clip((cols // self.block_px).astype(int), 0, self.blocks.shape[1] - 1)
        return self.blocks[bi, bj]

    def mask(self, w: Window) -> np.ndarray:
        """Validation mask of a window's pixels."""
        idx = np.arange(w.size) + 0.5
        cols, rows = np.meshgrid(idx + w.col_off, idx + w.row_off)
        return self.is_val(cols, rows)

    @property
    def any_val(self) -> bool:
        """Some pixels are validation."""
        return bool(self.all_val if self.blocks is None else self.blocks.any())

    @property
    def any_train(self) -> bool:
        """Some pixels are training."""
        return bool(not self.all_val if self.blocks is None else not self.blocks.all())


def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1) if len(boxes) else np.zeros((0, 2))


def _anchor_windows(points: np.ndarray, classes: np.ndarray, scene: int, size: int, kind: str) -> list[Window]:
    """One window per point, except points in the inner half of an earlier window, which join it."""
    groups: list[tuple[int, int, list[tuple[float, float, int]]]] = []
    for (x, y), k in zip(points, classes, strict=True):
        for col, row, members in groups:
            if col + size / 4 <= x < col + 3 * size / 4 and row + size / 4 <= y < row + 3 * size / 4:
                members.append((float(x), float(y), int(k)))
                break
        else:
            groups.append((int(round(x - size / 2)), int(round(y - size / 2)), [(float(x), float(y), int(k))]))
    return [Window(scene, col, row, size, kind, anchors=tuple(members)) for col, row, members in groups]


def plan_windows(
    truth: Sequence[SceneLabels], regions: Sequence[Region], window: int, negatives_per_scene: int | Sequence[int],
    val_tile: int, seed: int,
) -> tuple[list[Window], list[Window]]:
    """Training and validation windows of every scene (nothing is read).

    ``negatives_per_scene`` is one number for every scene, or one per scene.
    """
    rng = np.random.default_rng(seed)
    per_scene = ([negatives_per_scene] * len(truth) if isinstance(negatives_per_scene, int)
                 else list(negatives_per_scene))
    train: list[Window] = []
    val: list[Window] = []
    for si, (sl, region) in enumerate(zip(truth, regions, strict=True)):
        sc = sl.scene
        if region.any_train:
            centres = _centres(sl.boxes)
            keep = ~region.is_val(centres[:, 0], centres[:, 1]) if len(centres) else np.zeros(0, bool)
            train += _anchor_windows(centres[keep], sl.labels[keep], si, window, "object")
            negs = sl.negatives
            keep = ~region.is_val(negs[:, 0], negs[:, 1]) if len(negs) else np.zeros(0, bool)
            train += _anchor_windows(negs[keep], np.full(int(keep.sum()), -1), si, window, "hard")
            tiles = [t for t in TileGrid(sc.width, sc.height, window, window // 4).tiles()
                     if not region.mask(Window(si, t.col_off, t.row_off, window, "")).all()]
            pick = rng.permutation(len(tiles))[: per_scene[si]]
            train += [Window(si, tiles[i].col_off, tiles[i].row_off, window, "background") for i in sorted(pick)]
        if region.any_val:
            grid = TileGrid(sc.width, sc.height, val_tile, val_tile // 4)
            for t in grid.tiles():
                w = Window(si, t.col_off, t.row_off, val_tile, "validation",
                           (t.core_col_start, t.core_row_start, t.core_col_stop, t.core_row_stop))
                if region.mask(w).any():
                    val.append(w)
    return train, val


def _read_window(reader: SceneReader, scene: Scene, w: Window) -> tuple[np.ndarray, np.ndarray]:
    """Read a window that may reach past the raster; outside pixels are zero and invalid."""
    data = np.zeros((len(scene.bands), w.size, w.size), np.float32)
    valid = np.zeros((w.size, w.size), bool)
    c0, r0 = max(w.col_off, 0), max(w.row_off, 0)
    c1, r1 = min(w.col_off + w.size, scene.width), min(w.row_off + w.size, scene.height)
    if c1 > c0 and r1 > r0:
        d, v = reader.read(c0, r0, c1 - c0, r1 - r0)
        data[:, r0 - w.row_off : r1 - w.row_off, c0 - w.col_off : c1 - w.col_off] = d
        valid[r0 - w.row_off : r1 - w.row_off, c0 - w.col_off : c1 - w.col_off] = v
    return data, valid


def _mirror_outside(data: np.ndarray, scene: Scene, w: Window) -> None:
    """Fill a normalised chip's pixels past the raster's edges with the raster mirrored at those edges, as
    detect fills its edge tiles (:func:`sitewatch.imagery.detect.worker.mirror_padding`); they stay invalid."""
    c0, r0 = max(w.col_off, 0), max(w.row_off, 0)
    c1, r1 = min(w.col_off + w.size, scene.width), min(w.row_off + w.size, scene.height)
    mirror_beyond(data, c0 - w.col_off, r0 - w.row_off, c1 - w.col_off, r1 - w.row_off)


def read_chips(
    scene: Scene, windows: Sequence[Window], stats: SceneStats | SitewatchError, labels: SceneLabels, region: Region,
    edge_padding: str = "zero",
) -> list[Chip]:
    """Read, normalise and label a block of windows of one scene (runs in a Dask task)."""
    if isinstance(stats, SitewatchError):
        raise stats
    out = []
    centres = _centres(labels.boxes)
    missing = np.array([b.missing for b in scene.bands]) if scene.missing_bands else None
    with SceneReader(scene) as reader:
        for w in windows:
            raw, valid = _read_window(reader, scene, w)
            if w.kind == "validation":
                valid &= region.mask(w)
            else:
                valid &= ~region.mask(w)
            data = apply(raw, stats.lo, stats.hi, valid)
            if edge_padding == "mirror":
                _mirror_outside(data, scene, w)
            inside = np.zeros(len(centres), bool)
            if len(centres):
                inside = ((centres[:, 0] >= w.col_off) & (centres[:, 0] < w.col_off + w.size)
                          & (centres[:, 1] >= w.row_off) & (centres[:, 1] < w.row_off + w.size))
                # validation keeps only the labels of the validation area, training the others
                in_val = region.is_val(centres[:, 0], centres[:, 1])
                inside &= in_val if w.kind == "validation" else ~in_val
            shift = np.array([w.col_off, w.row_off] * 2, dtype=float)
            boxes = labels.boxes[inside] - shift
            anchors = np.array(w.anchors, dtype=float).reshape(-1, 3)
            anchors[:, :2] -= shift[:2]
            out.append(Chip(w, data.astype(np.float32), valid, boxes, labels.labels[inside].copy(), anchors, missing))
    return out


def build_chips(
    truth: Sequence[SceneLabels], regions: Sequence[Region], norm: Normalisation, band_names: Sequence[str],
    window: int, negatives_per_scene: int | Sequence[int], val_tile: int, seed: int, workers: int = 1,
    windows_per_task: int = 32, on_chips: Callable[[int], None] | None = None, scheduler: Any = None,
    edge_padding: str = "zero",
) -> tuple[list[Chip], list[Chip]]:
    """Plan and read every training and validation window with Dask (local threads by default).

    A window's pixels past its scene's edge are the scene mirrored at the edge (``edge_padding``
    ``mirror``, as detect fills its edge tiles) or zeros (``zero``); they are invalid either way.

    Returns ``(train_chips, val_chips)`` in a deterministic order.

    Raises:
        SitewatchError: a scene cannot be read (names the file).
    """
    train_w, val_w = plan_windows(truth, regions, window, negatives_per_scene, val_tile, seed)
    tasks = []
    for si, sl in enumerate(truth):
        stats = dask.delayed(scene_stats, pure=True)(sl.scene, norm, tuple(band_names))
        mine = [w for w in train_w + val_w if w.scene == si]
        for i in range(0, len(mine), windows_per_task):
            tasks.append(dask.delayed(read_chips, pure=True)(sl.scene, mine[i : i + windows_per_task], stats, sl, regions[si],
                                                             edge_padding))
    from dask.callbacks import Callback

    class _Progress(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:  # noqa: A002
            if on_chips and isinstance(result, list):
                on_chips(len(result))

    if scheduler is None:
        with _Progress():
            results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
    else:
        results = dask.compute(*tasks, scheduler=scheduler)
    chips = [c for block in results for c in block]
    train = [c for c in chips if c.window.kind != "validation"]
    val = [c for c in chips if c.window.kind == "validation"]
    log.info("%d training windows, %d validation tiles", len(train), len(val))
    return train, val


def tile_of(w: Window) -> Tile:
    """The validation window as a :class:`Tile` (for core ownership)."""
    assert w.core is not None  # noqa: S101 - validation windows carry their core
    c0, r0, c1, r1 = w.core
    return Tile(0, 0, 0, w.row_off, w.col_off, w.size, r0, r1, c0, c1)
