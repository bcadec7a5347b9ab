"""Copy-paste augmentation: objects go onto ground like their own, with their boxes."""

from __future__ import annotations

import numpy as np
from affine import Affine

from sitewatch.imagery.scenes.normalise import Normalisation
from sitewatch.imagery.scenes.scene import open_scene
from sitewatch.training.chips import Region, build_chips
from sitewatch.training.copypaste import cut_sprites, paste
from sitewatch.training.dataset import Augment, ChipSampler
from sitewatch.training.labels import SceneLabels

BANDS = ("B02", "B03", "B04", "B08")


def _scene(make_geotiff):  # type: ignore[no-untyped-def]
    """400 x 200 px: calm water on the left half, textured land on the right; ships on the water."""
    rng = np.random.default_rng(3)
    data = np.full((4, 200, 400), 300, np.float64) + rng.normal(0, 5, (4, 200, 400))
    data[:, :, 200:] = 2500 + rng.normal(0, 600, (4, 200, 200))
    boxes = np.array([[40, 40, 52, 46], [120, 130, 126, 144], [60, 150, 68, 156]], float)
    for x0, y0, x1, y1 in boxes.astype(int):
        data[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = 3000
    path = make_geotiff(400, 200, data=np.clip(data, 0, 10000).astype(np.uint16),
                        transform=Affine(10, 0, 500000, 0, -10, 4_800_000))
    return SceneLabels(open_scene(path, BANDS), boxes, np.zeros(3, np.int64), np.zeros((0, 2)))


def test_sprites_are_the_objects_and_paste_only_onto_water(make_geotiff) -> None:  # type: ignore[no-untyped-def]
    sl = _scene(make_geotiff)
    train, _ = build_chips([sl], [Region(None, 1.0, False)], Normalisation(), BANDS, 96, 16, 64, seed=0)
    sprites = cut_sprites(train)
    assert len(sprites) == 3
    for s in sprites:
        # the mask is the bright inside of the box, not the water around it
        x0, y0, x1, y1 = (int(v) for v in s.box)
        assert s.mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].all()
        assert s.mask.sum() == (x1 - x0 - 2) * (y1 - y0 - 2)
    rng = np.random.default_rng(0)
    pasted_on_water = pasted_on_land = 0
    for c in train:
        if c.window.kind != "background":
            continue
        chip, boxes, labels = paste(c.data, c.valid, c.boxes, c.labels, sprites, rng, 3)
        assert len(boxes) == len(labels)
        for b in boxes[len(c.boxes):]:
            cx = c.window.col_off + (b[0] + b[2]) / 2
            pasted_on_water += cx < 200
            pasted_on_land += cx >= 200
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            # the pasted object is as bright as the ships it was cut from
            assert chip[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].mean() > chip.mean() + 0.3
    assert pasted_on_water >= 5 and pasted_on_land == 0


def test_sampler_pastes_objects_with_boxes(make_geotiff) -> None:  # type: ignore[no-untyped-def]
    sl = _scene(make_geotiff)
    train, _ = build_chips([sl], [Region(None, 1.0, False)], Normalisation(), BANDS, 96, 16, 64, seed=0)
    rng = np.random.default_rng(1)
    plain = ChipSampler(train, 64, pos_fraction=0.0, hard_fraction=0.0, augment=Augment(brightness=0, contrast=0, noise=0))
    pasting = ChipSampler(train, 64, pos_fraction=0.0, hard_fraction=0.0,
                          augment=Augment(brightness=0, contrast=0, noise=0, copy_paste=1.0))
    n_plain = sum(len(plain.sample(rng)[2]) for _ in range(40))
    n_pasted = sum(len(pasting.sample(rng)[2]) for _ in range(40))
    assert n_pasted > n_plain + 20
