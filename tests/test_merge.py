"""Seam tests without a model: a perfect detector, tile-core ownership and sitewatch.imagery.detect.merge.suppress.

The detector sees, in each tile, the part of every object inside the tile's window (in scene
pixels), exactly as a real detector sees an object cut by the tile edge. Ownership
(:func:`sitewatch.imagery.detect.worker.in_core`) plus class-aware suppression must then report every object
exactly once, with its whole box.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from sitewatch.imagery.detect.merge import suppress
from sitewatch.imagery.detect.worker import empty_detections, georeference, in_core
from sitewatch.imagery.scenes.scene import BandSource, Scene
from sitewatch.imagery.scenes.tiling import TileGrid

WIDTH, HEIGHT, SIZE, OVERLAP = 300, 260, 64, 16
IOU = 0.4


def make_scene(
    width: int = WIDTH,
    height: int = HEIGHT,
    *,
    origin: tuple[float, float] = (500_000.0, 4_800_000.0),
    epsg: int = 32633,
) -> Scene:
    """A scene description on a real UTM grid (10 m pixels); no file is needed to georeference."""
    return Scene(
        name="s",
        source="memory",
        bands=(BandSource("memory", 1, "B02"),),
        width=width,
        height=height,
        crs_wkt=str(CRS.from_epsg(epsg).to_wkt()),
        transform=(10.0, 0.0, origin[0], 0.0, -10.0, origin[1]),
        dtype="uint16",
        nodata=None,
    )


def box(cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def seen_in_tile(
    objects: np.ndarray, col_off: int, row_off: int, size: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """What a perfect detector reports in one tile: object boxes clipped to the window.

    Returns the clipped boxes (scene pixels) and the indexes of the objects they belong to.
    Only the part of the window inside the raster holds data (the rest is padding).
    """
    lo = np.array([col_off, row_off, col_off, row_off], dtype=float)
    hi = np.array([min(col_off + size, width), min(row_off + size, height)] * 2, dtype=float)
    clipped = np.clip(objects, lo, hi)
    visible = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[visible], np.flatnonzero(visible)


def detect_scene(
    scene: Scene, grid: TileGrid, objects: np.ndarray, labels: np.ndarray, scores: np.ndarray
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Per-tile detections after ownership, georeferenced as a block task does it.

    Also returns how many tiles saw (part of) each object, to prove the case exercises seams.
    """
    parts = []
    sightings = np.zeros(len(objects), dtype=int)
    for tile in grid.tiles():
        boxes, idx = seen_in_tile(objects, tile.col_off, tile.row_off, tile.size, scene.width, scene.height)
        sightings[idx] += 1
        keep = in_core(tile, boxes)
        parts.append(georeference(scene, boxes[keep], scores[idx][keep], labels[idx][keep]))
    return parts, sightings


def sort_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


# Seams of the 300 x 260 grid with 64-pixel tiles overlapping by 16 (stride 48):
# windows start at 0, 48, 96, ... (an overlap zone is [48k, 48k + 16)); cores split each
# zone at 48k + 8; the last column's window (240..304) and row's (240..304) pass the edge.
SEAM_OBJECTS = [
    # On a core boundary (the seam midpoint, x = 56): the centre is exactly on it.
    box(56, 24, 14, 10),
    box(104, 24, 5, 5),  # odd size: x0/x1 are half pixels
    # On the boundaries of overlap zones = tile window edges (x = 48 and x = 64).
    box(48, 100, 14, 14),
    box(64, 100, 14, 14),
    box(144, 100, 4, 12),
    box(160, 100, 4, 12),
    # Box edges exactly on a window edge: wholly inside one tile, touching the next.
    (34.0, 150.0, 48.0, 160.0),  # x1 on the start of column 1
    (64.0, 150.0, 76.0, 160.0),  # x0 on the end of column 0
    (100.0, 34.0, 110.0, 48.0),  # y1 on the start of row 1
    (150.0, 64.0, 162.0, 70.0),  # y0 on the end of row 0
    # Horizontal seams.
    box(24, 56, 10, 14),
    box(220, 152, 6, 6),
    box(200, 48, 12, 12),
    # Where four tiles meet: four cores, four windows, and the overlap-zone corners.
    box(56, 56, 12, 12),
    box(104, 104, 7, 9),
    box(200, 200, 14, 14),
    box(144, 144, 14, 14),
    box(208, 64, 12, 12),
    box(152, 248, 10, 8),  # on the last row's core boundary
    box(248, 152, 8, 10),  # on the last column's core boundary
    box(248, 248, 6, 6),  # corner of the last row and column cores
    # Raster edges and corners, including the last row/column (moved back inside the raster).
    (0.0, 0.0, 9.0, 7.0),
    (291.0, 0.0, 300.0, 12.0),
    (0.0, 250.0, 14.0, 260.0),
    (286.0, 246.0, 300.0, 260.0),
    (120.0, 0.0, 126.0, 4.0),
    (296.0, 120.0, 300.0, 130.0),
    (60.0, 254.0, 72.0, 260.0),  # the bottom edge, across a vertical seam
    (0.0, 58.0, 4.0, 62.0),  # the left edge, across a horizontal seam
]


def _check_disjoint(objects: np.ndarray) -> None:
    """The fixture's objects must not touch, or suppression could rightly drop one."""
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            a, b = objects[i], objects[j]
            inter_w = min(a[2], b[2]) - max(a[0], b[0])
            inter_h = min(a[3], b[3]) - max(a[1], b[1])
            assert inter_w <= 0 or inter_h <= 0, (a, b)


def test_objects_on_seams_come_out_once_with_their_whole_box() -> None:
    scene = make_scene()
    grid = TileGrid(WIDTH, HEIGHT, SIZE, OVERLAP)
    objects = np.array(SEAM_OBJECTS, dtype=float)
    _check_disjoint(objects)
    assert (objects[:, :2] >= 0).all() and (objects[:, 2] <= WIDTH).all() and (objects[:, 3] <= HEIGHT).all()
    widths, heights = objects[:, 2] - objects[:, 0], objects[:, 3] - objects[:, 1]
    assert widths.min() >= 4 and widths.max() <= 14 and heights.min() >= 4 and heights.max() <= 14
    labels = np.zeros(len(objects), dtype=np.int64)
    scores = np.linspace(0.9, 0.5, len(objects)).astype(np.float32)

    parts, sightings = detect_scene(scene, grid, objects, labels, scores)
    # The case is a real seam test: most objects are seen (whole or cut) by several tiles,
    # objects on four-tile corners by four, and by six in the wider overlap of the last row
    # (moved back to end at the raster's edge) where it meets a column seam.
    assert (sightings >= 2).sum() >= len(objects) - 4
    assert sightings.max() == 6
    # Ownership alone already keeps one copy of each (suppression is only the safety net).
    assert sum(len(p["scores"]) for p in parts) == len(objects)

    out = suppress(parts, iou=IOU)
    assert len(out["scores"]) == len(objects)
    np.testing.assert_array_equal(sort_rows(out["boxes"]), sort_rows(objects))
    # Scores are carried with their own box, and the output is sorted by score.
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_array_equal(out["scores"], scores[order])
    np.testing.assert_array_equal(out["boxes"], objects[order])
    # Map boxes and centres are those of the whole box.
    whole = georeference(scene, objects[order], scores[order], labels[order])
    for key in ("map_boxes", "corners_lonlat", "centre_lonlat"):
        np.testing.assert_allclose(out[key], whole[key], rtol=0, atol=1e-9)


def test_ownership_does_the_work_not_suppression() -> None:
    # Without ownership the cut parts survive suppression (their IoU with the whole box is
    # small), so the test above would fail if in_core kept everything a tile sees.
    scene = make_scene()
    grid = TileGrid(WIDTH, HEIGHT, SIZE, OVERLAP)
    # Mostly in column 1 / the second row, with a sliver (< 40 % of the box) in the tiles before.
    objects = np.array([box(68, 100, 14, 14), box(68, 164, 14, 14)], dtype=float)
    parts = []
    for tile in grid.tiles():
        boxes, idx = seen_in_tile(objects, tile.col_off, tile.row_off, tile.size, WIDTH, HEIGHT)
        parts.append(georeference(scene, boxes, np.full(len(idx), 0.9, np.float32), np.zeros(len(idx), np.int64)))
    assert len(suppress(parts, iou=IOU)["scores"]) > len(objects)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_grids_and_objects_come_out_once(data: st.DataObject) -> None:
    size = data.draw(st.integers(32, 96), label="size")
    overlap = data.draw(st.integers(14, size // 2), label="overlap")
    width = data.draw(st.integers(20, 260), label="width")
    height = data.draw(st.integers(20, 260), label="height")
    grid = TileGrid(width, height, size, overlap)
    # Objects no larger than the overlap (rounded down to even), as the tiling requires.
    limit = min(14, 2 * (overlap // 2))
    n = data.draw(st.integers(1, 4), label="n")
    objects = []
    for _ in range(n):
        w = data.draw(st.floats(4, limit), label="w")
        h = data.draw(st.floats(4, limit), label="h")
        # Snap some positions to whole and half pixels, where seams are.
        x0 = data.draw(st.one_of(st.floats(0, width - w), st.integers(0, int(width - w)).map(float)), label="x0")
        y0 = data.draw(
            st.one_of(st.floats(0, height - h), st.integers(0, int(height - h) * 2).map(lambda v: v / 2)), label="y0"
        )
        objects.append((x0, y0, x0 + w, y0 + h))
    objects_arr = np.array(objects)
    # One class per object, so suppression never merges two of them.
    labels = np.arange(n, dtype=np.int64)
    scores = np.full(n, 0.8, dtype=np.float32)
    parts, _ = detect_scene(make_scene(width, height), grid, objects_arr, labels, scores)
    assert sum(len(p["scores"]) for p in parts) == n
    out = suppress(parts, iou=IOU)
    assert sorted(out["labels"].tolist()) == list(range(n))
    np.testing.assert_array_equal(out["boxes"][np.argsort(out["labels"])], objects_arr)


def _dets(
    scene: Scene, boxes: list[tuple[float, float, float, float]], scores: list[float], labels: list[int]
) -> dict[str, np.ndarray]:
    return georeference(scene, np.array(boxes, dtype=float), np.array(scores, np.float32), np.array(labels, np.int64))


def test_different_classes_in_the_same_place_are_both_kept() -> None:
    scene = make_scene()
    b = box(100, 100, 12, 12)
    out = suppress([_dets(scene, [b], [0.9], [0]), _dets(scene, [b], [0.6], [1])], iou=IOU)
    assert sorted(out["labels"].tolist()) == [0, 1]
    # Same place, same class: one is dropped, so the pair above survives because of its classes.
    same = suppress([_dets(scene, [b], [0.9], [0]), _dets(scene, [b], [0.6], [0])], iou=IOU)
    assert same["scores"].tolist() == pytest.approx([0.9])


def test_same_class_detections_from_overlapping_scenes_keep_the_higher_score() -> None:
    # Scene B's grid starts 100 pixels right and 40 down of scene A's, in the same CRS.
    a = make_scene(origin=(500_000.0, 4_800_000.0))
    b = make_scene(origin=(501_000.0, 4_799_600.0))
    in_a = box(150, 80, 12, 10)
    in_b = (in_a[0] - 100, in_a[1] - 40, in_a[2] - 100, in_a[3] - 40)  # the same ground box
    shifted = box(150 + 3, 80 + 2, 12, 10)  # a slightly different peak on the same object
    far = box(20, 200, 10, 10)
    det_a = _dets(a, [in_a, far], [0.55, 0.7], [0, 0])
    det_b = _dets(b, [(shifted[0] - 100, shifted[1] - 40, shifted[2] - 100, shifted[3] - 40)], [0.8], [0])
    np.testing.assert_allclose(
        _dets(b, [in_b], [0.8], [0])["map_boxes"], _dets(a, [in_a], [0.8], [0])["map_boxes"], atol=1e-6
    )
    out = suppress([det_a, det_b], iou=IOU)
    assert out["scores"].tolist() == pytest.approx([0.8, 0.7])
    # The survivor is scene B's detection, with its own pixel box and map box.
    np.testing.assert_array_equal(out["map_boxes"][0], det_b["map_boxes"][0])
    np.testing.assert_array_equal(out["boxes"][1], np.array(far))
    # Order of the parts does not matter.
    again = suppress([det_b, det_a], iou=IOU)
    np.testing.assert_array_equal(again["map_boxes"], out["map_boxes"])


def test_overlap_below_the_iou_threshold_keeps_both() -> None:
    scene = make_scene()
    a = (100.0, 100.0, 110.0, 110.0)
    b = (106.0, 100.0, 116.0, 110.0)  # IoU = 40 / 160 = 0.25
    out = suppress([_dets(scene, [a, b], [0.9, 0.8], [0, 0])], iou=IOU)
    assert len(out["scores"]) == 2
    c = (103.0, 100.0, 113.0, 110.0)  # IoU = 70 / 130 = 0.54
    out = suppress([_dets(scene, [a, c], [0.8, 0.9], [0, 0])], iou=IOU)
    np.testing.assert_array_equal(out["boxes"], [c])


def test_suppress_of_nothing_is_empty() -> None:
    empty = suppress([empty_detections(), empty_detections()], iou=IOU)
    assert set(empty) == set(empty_detections())
    assert all(len(v) == 0 for v in empty.values())
    assert len(suppress([], iou=IOU)["scores"]) == 0
