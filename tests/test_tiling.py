"""Property tests of sitewatch.imagery.scenes.tiling: coverage, overlap, edges, core partition, blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.tiling import Tile, TileGrid

# Tile-level checks materialise every Tile; past this many they would dominate the run
# (a stride-1 grid over 3000 x 3000 pixels has 9 million tiles), so those examples are
# left to the per-axis tests, which cover the full range.
MAX_TILES = 4000

# Per-example work is small, but the machine is slow and shared: keep the run short.
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@st.composite
def grids(draw: st.DrawFn, max_side: int = 3000) -> TileGrid:
    """Any valid grid: width/height 1..max_side, size 8..512, overlap 0..size-1."""
    size = draw(st.integers(8, 512))
    return TileGrid(
        width=draw(st.integers(1, max_side)),
        height=draw(st.integers(1, max_side)),
        size=size,
        overlap=draw(st.integers(0, size - 1)),
    )


def _small_enough(grid: TileGrid) -> TileGrid:
    assume(len(grid) <= MAX_TILES)
    return grid


def _axis_cores(grid: TileGrid, tiles: tuple[Tile, ...]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Core intervals of tile rows and tile columns, checking that they are a product.

    Every tile in tile-row ``r`` must have the same core rows, and every tile in tile-column
    ``c`` the same core columns; only then is the 2-D partition the product of two 1-D ones.
    """
    rows: dict[int, tuple[int, int]] = {}
    cols: dict[int, tuple[int, int]] = {}
    for t in tiles:
        assert rows.setdefault(t.row, (t.core_row_start, t.core_row_stop)) == (t.core_row_start, t.core_row_stop)
        assert cols.setdefault(t.col, (t.core_col_start, t.core_col_stop)) == (t.core_col_start, t.core_col_stop)
    n_rows, n_cols = grid.shape
    assert sorted(rows) == list(range(n_rows))
    assert sorted(cols) == list(range(n_cols))
    return [rows[r] for r in range(n_rows)], [cols[c] for c in range(n_cols)]


def _check_axis(offsets: tuple[int, ...], length: int, size: int, overlap: int) -> None:
    """The 1-D facts every axis of a grid must satisfy."""
    assert offsets[0] == 0
    # Every tile starts inside the raster, each after the one before.
    assert all(0 <= o < length for o in offsets)
    assert all(a < b for a, b in zip(offsets, offsets[1:], strict=False))
    # Neighbours start ``stride`` apart, so their windows share exactly ``overlap`` pixels, except
    # the last pair: the last tile is moved back to end at the edge, and overlaps more.
    for a, b in zip(offsets[:-1], offsets[1:-1], strict=False):
        assert (a + size) - b == overlap
    if len(offsets) > 1:
        assert overlap <= (offsets[-2] + size) - offsets[-1] < size
        # The tile before the last does not reach the edge (else the last would be redundant).
        assert offsets[-2] + size < length
    # Coverage: the last tile reaches the edge, and only a raster smaller than a tile is padded.
    if length >= size:
        assert offsets[-1] + size == length
    else:
        assert offsets == (0,)


@FAST
@given(grids())
@example(TileGrid(3000, 3000, 8, 7))  # stride 1: 2993 tiles per axis
@example(TileGrid(3000, 1, 512, 0))
@example(TileGrid(5, 3, 512, 511))  # raster smaller than the overlap
@example(TileGrid(1, 1, 8, 0))
@example(TileGrid(2816, 2816, 512, 256))  # last tile ends exactly at the edge
@example(TileGrid(300, 300, 256, 32))  # the last tile moves back 180 pixels
def test_axes_cover_the_raster_with_exact_overlaps(grid: TileGrid) -> None:
    _check_axis(grid.col_offsets, grid.width, grid.size, grid.overlap)
    _check_axis(grid.row_offsets, grid.height, grid.size, grid.overlap)
    assert grid.stride == grid.size - grid.overlap
    assert len(grid) == len(grid.col_offsets) * len(grid.row_offsets)


@FAST
@given(grids().map(_small_enough))
def test_tiles_are_the_product_of_the_axes_row_by_row(grid: TileGrid) -> None:
    tiles = grid.tiles()
    assert len(tiles) == len(grid)
    assert [t.index for t in tiles] == list(range(len(tiles)))
    expected = [(r, c, ro, co) for r, ro in enumerate(grid.row_offsets) for c, co in enumerate(grid.col_offsets)]
    assert [(t.row, t.col, t.row_off, t.col_off) for t in tiles] == expected
    assert all(t.size == grid.size for t in tiles)


@FAST
@given(grids().map(_small_enough))
def test_neighbouring_tiles_overlap_by_overlap_and_the_last_by_more(grid: TileGrid) -> None:
    n_rows, n_cols = grid.shape
    tiles = grid.tiles()
    at = {(t.row, t.col): t for t in tiles}
    for t in tiles:
        right = at.get((t.row, t.col + 1))
        if right is not None:
            assert right.row_off == t.row_off
            shared = t.col_off + t.size - right.col_off
            assert shared == grid.overlap if right.col < n_cols - 1 else grid.overlap <= shared < grid.size
        below = at.get((t.row + 1, t.col))
        if below is not None:
            assert below.col_off == t.col_off
            shared = t.row_off + t.size - below.row_off
            assert shared == grid.overlap if below.row < n_rows - 1 else grid.overlap <= shared < grid.size
    assert len(at) == n_rows * n_cols


@FAST
@given(grids().map(_small_enough))
def test_windows_start_inside_and_reach_past_the_edge_only_of_a_raster_smaller_than_a_tile(grid: TileGrid) -> None:
    for t in grid.tiles():
        assert 0 <= t.col_off < grid.width
        assert 0 <= t.row_off < grid.height
        if grid.width >= grid.size:
            assert t.col_off + t.size <= grid.width
        if grid.height >= grid.size:
            assert t.row_off + t.size <= grid.height
        col, row, w, h = t.clipped(grid.width, grid.height)
        assert (col, row) == (t.col_off, t.row_off)
        assert 1 <= w <= t.size and 1 <= h <= t.size
        assert col + w <= grid.width and row + h <= grid.height
        # Clipping only cuts what lies past the edge.
        assert w == t.size or col + w == grid.width
        assert h == t.size or row + h == grid.height


@FAST
@given(grids().map(_small_enough))
def test_cores_partition_the_raster_by_interval_arithmetic(grid: TileGrid) -> None:
    tiles = grid.tiles()
    row_cores, col_cores = _axis_cores(grid, tiles)
    for cores, length in ((row_cores, grid.height), (col_cores, grid.width)):
        assert cores[0][0] == 0
        assert cores[-1][1] == length
        for (_, stop), (start, _) in zip(cores, cores[1:], strict=False):
            assert stop == start  # no gap, no overlap
        assert all(start < stop for start, stop in cores)  # no empty core
    for t in tiles:
        # A core lies inside its own window, so the tile that owns a pixel has read it.
        assert t.row_off <= t.core_row_start and t.core_row_stop <= t.row_off + t.size
        assert t.col_off <= t.core_col_start and t.core_col_stop <= t.col_off + t.size


@FAST
@given(grids(max_side=160).map(_small_enough))
@example(TileGrid(160, 1, 8, 7))
@example(TileGrid(41, 17, 8, 3))
def test_every_pixel_is_in_a_window_and_in_exactly_one_core(grid: TileGrid) -> None:
    windows = np.zeros((grid.height, grid.width), dtype=np.int32)
    cores = np.zeros_like(windows)
    for t in grid.tiles():
        windows[t.row_off : t.row_off + t.size, t.col_off : t.col_off + t.size] += 1
        cores[t.core_row_start : t.core_row_stop, t.core_col_start : t.core_col_stop] += 1
    assert windows.min() >= 1
    assert (cores == 1).all()


@FAST
@given(grids(max_side=600).map(_small_enough), st.integers(1, 50))
def test_blocks_keep_every_tile_in_order(grid: TileGrid, k: int) -> None:
    blocks = grid.blocks(k)
    assert [t for b in blocks for t in b] == list(grid.tiles())
    assert all(1 <= len(b) <= k for b in blocks)
    # Full blocks, then (from k = 4) the last 2k tiles in blocks of k // 4 so workers end together.
    tail = min(len(grid), 2 * k) if k >= 4 else 0
    small = max(1, k // 4)
    head = len(grid) - tail
    assert len(blocks) == math.ceil(head / k) + math.ceil(tail / small)
    assert all(len(b) == k for b in blocks[: head // k])
    assert all(len(b) <= small for b in blocks[math.ceil(head / k):])


def test_known_grid() -> None:
    """A hand-checked example, so the properties above are anchored to real numbers."""
    grid = TileGrid(300, 260, 64, 16)
    # The last column and row are moved back to end at the edge: 300 - 64 and 260 - 64.
    assert grid.col_offsets == (0, 48, 96, 144, 192, 236)
    assert grid.row_offsets == (0, 48, 96, 144, 192, 196)
    tiles = grid.tiles()
    first, last = tiles[0], tiles[-1]
    assert (first.core_col_start, first.core_col_stop, first.core_row_start, first.core_row_stop) == (0, 56, 0, 56)
    # The last seams sit mid-way through the wider overlaps: (192 + 236 + 64) // 2, (192 + 196 + 64) // 2.
    assert (last.core_col_start, last.core_col_stop, last.core_row_start, last.core_row_stop) == (246, 300, 226, 260)
    assert last.clipped(300, 260) == (236, 196, 64, 64)
    # Odd overlap: the seam sits at overlap // 2 past the next tile's start.
    odd = TileGrid(100, 10, 32, 7)
    assert odd.col_offsets == (0, 25, 50, 68)
    assert [(t.core_col_start, t.core_col_stop) for t in odd.tiles()] == [(0, 28), (28, 53), (53, 75), (75, 100)]
    # A raster smaller than a tile: one tile, padded past the edge by the reader.
    small = TileGrid(128, 100, 256, 48)
    assert small.tiles()[0].clipped(128, 100) == (0, 0, 128, 100)


@pytest.mark.parametrize(
    ("width", "height", "size", "overlap"),
    [
        (100, 100, 64, 64),  # overlap == size
        (100, 100, 64, 100),  # overlap > size
        (100, 100, 64, -1),  # negative overlap
        (0, 100, 64, 16),  # zero width
        (100, 0, 64, 16),  # zero height
        (-5, 100, 64, 16),  # negative width
        (100, 100, 7, 0),  # tile smaller than the minimum
        (100, 100, 64.0, 16),  # not an integer
        (100, 100, True, 0),  # bool is not a size
    ],
)
def test_invalid_grids_raise_usage_error(width: int, height: int, size: int, overlap: int) -> None:
    with pytest.raises(UsageError) as info:
        TileGrid(width, height, size, overlap)
    # Catchable as the built-in too, as rasterio's errors are.
    assert isinstance(info.value, ValueError)


def test_blocks_of_fewer_than_one_tile_raise_usage_error() -> None:
    with pytest.raises(UsageError, match="at least 1"):
        TileGrid(100, 100, 64, 16).blocks(0)


def test_numpy_integers_are_accepted() -> None:
    # Raster sizes often arrive as numpy integers (rasterio, array shapes).
    grid = TileGrid(np.int64(100), np.int32(90), 64, 16)
    assert grid.shape == (2, 2)
