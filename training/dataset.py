"""Augmented training chips drawn from windows read by :mod:`sitewatch.training.chips`.

Windows are read through the same :class:`~sitewatch.imagery.scenes.scene.SceneReader` and
:class:`~sitewatch.imagery.scenes.normalise.Normalisation` the detector uses, so a model sees at training
time exactly the inputs it will see in ``sitewatch detect``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from sitewatch.training.chips import Chip
from sitewatch.training.copypaste import cut_sprites, paste


@dataclass(frozen=True)
class Augment:
    """Augmentations suited to overhead imagery."""

    dihedral: bool = True
    # Sentinel-2 exports are stretched per scene: wide gain/bias jitter keeps the model
    # from learning one scene's stretch.
    brightness: float = 0.25
    contrast: float = 0.3
    noise: float = 0.02
    #: Scale jitter: chips are resampled by a factor drawn log-uniformly from
    #: ``[1 / (1 + scale), 1 + scale]``. Sentinel-2 exports in Web Mercator have 10 m
    #: map pixels that are 6 m to 10 m on the ground depending on latitude.
    scale: float = 0.0
    #: Chance of zeroing one band of a chip (bands the scene lacks are always zero).
    band_dropout: float = 0.0
    #: Chance that a chip gets labelled objects from other windows pasted onto matching
    #: ground (:mod:`sitewatch.training.copypaste`), and how many at most.
    copy_paste: float = 0.0
    copy_paste_max: int = 3


def _dihedral(chip: np.ndarray, valid: np.ndarray, boxes: np.ndarray, k: int, flip: bool, size: int):  # type: ignore[no-untyped-def]
    b = boxes.copy()
    if flip:
        chip, valid = chip[:, :, ::-1], valid[:, ::-1]
        b[:, [0, 2]] = size - b[:, [2, 0]]
    for _ in range(k):
        # rotate 90 degrees counter-clockwise: (x, y) -> (y, size - x)
        chip, valid = np.rot90(chip, 1, axes=(1, 2)), np.rot90(valid, 1)
        b = np.stack([b[:, 1], size - b[:, 2], b[:, 3], size - b[:, 0]], axis=1)
    return np.ascontiguousarray(chip), np.ascontiguousarray(valid), b


def _resample(chip: np.ndarray, valid: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a ``(bands, n, n)`` chip (bilinear, antialiased) and its mask (nearest) to ``size``."""
    t = torch.from_numpy(chip)[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    v = F.interpolate(torch.from_numpy(valid)[None, None].float(), size=(size, size), mode="nearest")[0, 0]
    return out.numpy(), v.numpy() > 0.5


class ChipSampler:
    """Draws augmented training chips of ``size`` pixels from windows read by :mod:`sitewatch.training.chips`.

    With probability ``pos_fraction`` a chip is centred near a labelled object, with
    ``hard_fraction`` near a hard negative (a rejected candidate, or the model's own false
    positive once mined), else anywhere in a window.
    """

    def __init__(self, chips: list[Chip], size: int, pos_fraction: float = 0.6,
                 augment: Augment | None = None, hard_fraction: float = 0.25, zero_invalid: bool = True) -> None:
        if not chips:
            raise ValueError("no training windows")
        self.chips = chips
        self.size = size
        self.pos_fraction = pos_fraction
        self.hard_fraction = hard_fraction
        self.augment = augment or Augment()
        #: Zero invalid pixels after augmentation; ``False`` keeps a window's mirrored padding past its
        #: scene (``model.edge_padding: mirror``), which the loss then leaves unsupervised.
        self.zero_invalid = zero_invalid
        self._objects = [(i, j) for i, c in enumerate(chips) if c.window.kind == "object" for j in range(len(c.anchors))]
        # Class balance: with several classes, objects of rare classes are drawn more often
        # (weight 1 / sqrt(class count)), so a class with few labels is not drowned out.
        classes = np.array([int(chips[i].anchors[j, 2]) for i, j in self._objects], dtype=np.int64)
        self._object_p: np.ndarray | None = None
        if len(np.unique(classes)) > 1:
            counts = np.bincount(classes)
            w = 1.0 / np.sqrt(counts[classes])
            self._object_p = w / w.sum()
        given = [(i, float(a[0]), float(a[1])) for i, c in enumerate(chips) if c.window.kind == "hard" for a in c.anchors]
        #: Known non-objects (rejected reviews); mining adds the model's false positives.
        self.given_hard: list[tuple[int, float, float]] = given
        #: Hard negatives: ``(chip index, column, row)`` in window pixels.
        self.hard: list[tuple[int, float, float]] = list(given)
        #: Objects to paste (copy-paste augmentation).
        self.sprites = cut_sprites(chips) if self.augment.copy_paste else []

    def set_mined(self, mined: list[tuple[int, float, float]]) -> None:
        """Replace the mined hard negatives (the given ones stay)."""
        self.hard = self.given_hard + mined

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One chip: ``(bands, size, size)`` data, valid mask, boxes and labels in chip pixels."""
        size = self.size
        a = self.augment
        # the square read from the window; resampled to ``size`` when scale jitter is on
        src = size
        if a.scale:
            factor = float(np.exp(rng.uniform(-np.log1p(a.scale), np.log1p(a.scale))))
            src = max(8, int(round(size / factor)))
        draw = rng.random()
        if self._objects and draw < self.pos_fraction:
            if self._object_p is None:
                ci, oj = self._objects[rng.integers(len(self._objects))]
            else:
                ci, oj = self._objects[rng.choice(len(self._objects), p=self._object_p)]
            c = self.chips[ci]
            cx, cy = c.anchors[oj, :2]
        elif self.hard and draw < self.pos_fraction + self.hard_fraction:
            ci, cx, cy = self.hard[rng.integers(len(self.hard))]
            c = self.chips[ci]
        else:
            ci = int(rng.integers(len(self.chips)))
            c = self.chips[ci]
            cx = cy = None
        w = c.window.size
        src = min(src, w)
        if cx is None or cy is None:
            col = int(rng.integers(0, w - src + 1))
            row = int(rng.integers(0, w - src + 1))
        else:
            col = int(np.clip(cx - rng.uniform(0.15, 0.85) * src, 0, w - src))
            row = int(np.clip(cy - rng.uniform(0.15, 0.85) * src, 0, w - src))
        chip = c.data[:, row : row + src, col : col + src].copy()
        valid = c.valid[row : row + src, col : col + src].copy()
        boxes = c.boxes - np.array([col, row, col, row], dtype=float)
        labels = c.labels
        if src != size:
            chip, valid = _resample(chip, valid, size)
            boxes = boxes * (size / src)
        cxs, cys = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cxs >= 0) & (cxs < size) & (cys >= 0) & (cys < size)
        boxes, labels = boxes[inside], labels[inside]
        boxes = np.clip(boxes, 0, size)
        if self.sprites and rng.random() < a.copy_paste:
            n = int(rng.integers(1, a.copy_paste_max + 1))
            chip, boxes, labels = paste(chip, valid, boxes, labels, self.sprites, rng, n)
        if a.dihedral:
            chip, valid, boxes = _dihedral(chip, valid, boxes, int(rng.integers(4)), bool(rng.integers(2)), size)
        if a.brightness or a.contrast:
            # one gain and bias for the chip, varied a little per band (colour balance)
            nb = (chip.shape[0], 1, 1)
            gain = (1 + rng.uniform(-a.contrast, a.contrast)) * (1 + rng.uniform(-0.1, 0.1, nb))
            bias = rng.uniform(-a.brightness, a.brightness) + rng.uniform(-0.05, 0.05, nb)
            chip = (chip * gain + bias).astype(np.float32)
        if a.noise:
            chip += rng.normal(0, a.noise, chip.shape).astype(np.float32)
        if c.missing is not None:
            chip[c.missing] = 0.0
        if a.band_dropout and chip.shape[0] > 1 and rng.random() < a.band_dropout:
            chip[int(rng.integers(chip.shape[0]))] = 0.0
        if self.zero_invalid:
            chip *= valid
        return chip, valid, boxes, labels
