"""Training windows: planned from the tile grid, read with Dask, validation never leaks into training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from sitewatch.imagery.scenes.normalise import Normalisation
from sitewatch.imagery.scenes.scene import open_scene
from sitewatch.training.chips import Region, build_chips, plan_windows
from sitewatch.training.dataset import Augment, ChipSampler
from sitewatch.training.labels import SceneLabels

BANDS = ("B02", "B03", "B04", "B08")


@pytest.fixture
def labelled(make_geotiff) -> SceneLabels:  # type: ignore[no-untyped-def]
    """A 300 x 200 scene with three bright 8 px objects."""
    data = np.full((4, 200, 300), 100, np.uint16)
    boxes = np.array([[20, 20, 28, 28], [150, 100, 158, 108], [280, 180, 288, 188]], float)
    for x0, y0, x1, y1 in boxes.astype(int):
        data[:, y0:y1, x0:x1] = 2000
    path = make_geotiff(300, 200, data=data, transform=Affine(10, 0, 500000, 0, -10, 4_800_000))
    return SceneLabels(open_scene(path, BANDS), boxes, np.zeros(3, np.int64), np.array([[100.0, 50.0]]))


def test_plan_one_window_per_object_and_negatives(labelled: SceneLabels) -> None:
    train, val = plan_windows([labelled], [Region(None, 1.0, False)], 64, 5, 64, seed=0)
    kinds = [w.kind for w in train]
    assert kinds.count("object") == 3
    assert kinds.count("hard") == 1
    assert kinds.count("background") == 5
    assert val == []
    # object windows are centred on their object
    centres = {(w.col_off + 32, w.row_off + 32) for w in train if w.kind == "object"}
    assert (24, 24) in centres and (154, 104) in centres


def test_nearby_objects_share_a_window(labelled: SceneLabels) -> None:
    close = SceneLabels(labelled.scene, np.array([[20, 20, 28, 28], [30, 22, 38, 30]], float), np.zeros(2, np.int64))
    train, _ = plan_windows([close], [Region(None, 1.0, False)], 64, 0, 64, seed=0)
    assert [w.kind for w in train] == ["object"]


def test_chips_read_normalised_and_labelled(labelled: SceneLabels) -> None:
    train, val = build_chips([labelled], [Region(None, 1.0, False)], Normalisation(), BANDS, 64, 4, 64, seed=0)
    objects = [c for c in train if c.window.kind == "object"]
    assert len(objects) == 3
    for c in objects:
        assert c.data.shape == (4, 64, 64)
        assert len(c.boxes) >= 1 and len(c.anchors) >= 1
        x0, y0, x1, y1 = c.boxes[0].astype(int)
        # the object is bright in the normalised window, and the labels sit on it
        assert c.data[:, y0:y1, x0:x1].mean() > c.data.mean() + 0.5
    edge = [c for c in objects if c.window.col_off + 64 > 300]
    assert edge and not edge[0].valid.all()  # past the raster's edge: invalid, not dropped


def test_block_split_masks_validation_out_of_training(labelled: SceneLabels) -> None:
    blocks = np.array([[False, True]])  # right half (cols >= 150) is validation
    region = Region(blocks, 150.0, False)
    train, val = build_chips([labelled], [region], Normalisation(), BANDS, 64, 20, 64, seed=0)
    assert val, "validation tiles are read"
    for c in train:
        cols = np.arange(64) + c.window.col_off + 0.5
        assert not c.valid[:, cols >= 150].any(), "training pixels never come from a validation block"
        assert all((b[0] + b[2]) / 2 < 150 for b in c.boxes + [c.window.col_off, 0, c.window.col_off, 0])
    for c in val:
        cols = np.arange(64) + c.window.col_off + 0.5
        assert not c.valid[:, cols < 150].any()
    assert sum(c.window.kind == "object" for c in train) == 1


def test_sampler_keeps_boxes_on_objects_under_scale_jitter(labelled: SceneLabels) -> None:
    train, _ = build_chips([labelled], [Region(None, 1.0, False)], Normalisation(), BANDS, 96, 2, 64, seed=0)
    sampler = ChipSampler(train, 48, pos_fraction=1.0,
                          augment=Augment(dihedral=True, brightness=0, contrast=0, noise=0, scale=0.4))
    rng = np.random.default_rng(0)
    sides = []
    for _ in range(30):
        chip, valid, boxes, labels = sampler.sample(rng)
        assert chip.shape == (4, 48, 48) and len(boxes) == len(labels) >= 1
        x0, y0, x1, y1 = boxes[0]
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        assert chip[:, cy, cx].mean() > chip.mean()
        sides.append(x1 - x0)
    assert max(sides) / min(sides) > 1.3, "scale jitter changes object sizes"


def test_scene_split_planning_is_repeatable(labelled: SceneLabels, tmp_path: Path) -> None:
    a = plan_windows([labelled], [Region(None, 1.0, False)], 64, 3, 64, seed=5)
    b = plan_windows([labelled], [Region(None, 1.0, False)], 64, 3, 64, seed=5)
    assert a == b


def test_every_object_anchors_exactly_one_window(labelled: SceneLabels) -> None:
    boxes = np.array([[20, 20, 28, 28], [30, 22, 38, 30], [150, 100, 158, 108], [154, 104, 162, 112]], float)
    sl = SceneLabels(labelled.scene, boxes, np.zeros(4, np.int64))
    train, _ = plan_windows([sl], [Region(None, 1.0, False)], 64, 0, 64, seed=0)
    anchors = [a for w in train for a in w.anchors]
    assert len(anchors) == 4 and len(train) == 2
    assert sorted((a[0], a[1]) for a in anchors) == sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes)


def test_rare_classes_are_drawn_more_often_than_their_share(labelled: SceneLabels) -> None:
    # nine objects of class 0 and one of class 1, far apart: one window each
    cols = np.arange(10) * 28.0 + 4
    boxes = np.stack([cols, np.full(10, 90.0), cols + 6, np.full(10, 96.0)], axis=1)
    labels = np.array([0] * 9 + [1])
    sl = SceneLabels(labelled.scene, boxes, labels)
    train, _ = build_chips([sl], [Region(None, 1.0, False)], Normalisation(), BANDS, 16, 0, 64, seed=0)
    sampler = ChipSampler(train, 16, pos_fraction=1.0, augment=Augment(dihedral=False, brightness=0, contrast=0, noise=0))
    rng = np.random.default_rng(1)
    drawn = []
    for _ in range(400):
        ci, oj = sampler._objects[rng.choice(len(sampler._objects), p=sampler._object_p)]
        drawn.append(int(sampler.chips[ci].anchors[oj, 2]))
    share = np.mean(np.array(drawn) == 1)
    assert 0.15 < share < 0.4  # 1/sqrt weighting: 1 / (1 + 9 / 3) = 0.25, against a 0.1 share by count


def test_missing_bands_stay_zero_and_band_dropout_zeroes_one_band(make_geotiff, tmp_path: Path) -> None:
    """A scene without B02 trains with B02 at exactly zero (after gain, bias and noise);
    band dropout zeroes one band of about its share of chips, never all of them."""
    d = tmp_path / "partial"
    d.mkdir()
    for band in ("B03", "B04", "B08"):
        data = np.full((1, 200, 300), 100, np.uint16)
        data[:, 100:108, 150:158] = 2000
        make_geotiff(300, 200, bands=1, data=data, transform=Affine(10, 0, 500000, 0, -10, 4_800_000)).rename(
            d / f"S2_{band}.tif")
    scene = open_scene(d, BANDS, allow_missing=True)
    sl = SceneLabels(scene, np.array([[150, 100, 158, 108]], float), np.zeros(1, np.int64), np.zeros((0, 2)))
    train, _ = build_chips([sl], [Region(None, 1.0, False)], Normalisation(), BANDS, 96, 2, 64, seed=0)
    assert all(c.missing is not None and c.missing.tolist() == [True, False, False, False] for c in train)
    rng = np.random.default_rng(0)
    sampler = ChipSampler(train, 48, augment=Augment(brightness=0.25, contrast=0.3, noise=0.02))
    for _ in range(20):
        chip, valid, _, _ = sampler.sample(rng)
        assert not chip[0].any() and chip[1][valid].std() > 0
    sampler = ChipSampler(train, 48, augment=Augment(brightness=0.25, noise=0.02, band_dropout=0.5))
    zeroed = [int((~sampler.sample(rng)[0].reshape(4, -1).any(axis=1)).sum()) for _ in range(200)]
    assert set(zeroed) <= {1, 2}
    # B02 always; another band in 3/4 of the dropouts: expected share 0.375
    assert 0.25 < zeroed.count(2) / 200 < 0.5
