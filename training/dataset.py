"""Labelled scenes held in memory as normalised arrays, and a random chip sampler.

Training scenes are read once through the same :class:`~imagery.scene.SceneReader` and
:class:`~imagery.normalise.Normalisation` the detector uses, so a model sees at training
time exactly the inputs it will see in ``sitewatch detect``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from imagery.normalise import Normalisation, apply
from imagery.scene import Scene, SceneReader

#: Decimated side used for per-scene statistics, the same as detection uses.
STATS_SIDE = 1024


@dataclass
class LabelledScene:
    """A scene and its labelled boxes in the scene's pixel coordinates."""

    scene: Scene
    boxes: np.ndarray  # (n, 4) x0, y0, x1, y1
    labels: np.ndarray  # (n,) class index
    data: np.ndarray | None = field(default=None, repr=False)
    valid: np.ndarray | None = field(default=None, repr=False)

    def load(self, norm: Normalisation) -> LabelledScene:
        """Read and normalise the whole scene into memory (training scenes are chip-sized)."""
        with SceneReader(self.scene) as reader:
            ov, ov_valid, _ = reader.overview(STATS_SIDE)
            lo, hi = norm.scene_stats(ov, ov_valid)
            raw, valid = reader.read(0, 0, self.scene.width, self.scene.height)
        self.data = apply(raw, lo, hi)
        self.valid = valid
        return self


@dataclass(frozen=True)
class Augment:
    """Augmentations suited to overhead imagery."""

    dihedral: bool = True
    # Sentinel-2 exports are stretched per scene: wide gain/bias jitter keeps the model
    # from learning one scene's stretch.
    brightness: float = 0.25
    contrast: float = 0.3
    noise: float = 0.02


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


class ChipSampler:
    """Draws training chips: around labelled objects with probability ``pos_fraction``, else anywhere."""

    def __init__(self, scenes: list[LabelledScene], size: int, pos_fraction: float = 0.6,
                 augment: Augment | None = None, hard_fraction: float = 0.25) -> None:
        self.scenes = [s for s in scenes if s.data is not None]
        self.size = size
        self.pos_fraction = pos_fraction
        self.hard_fraction = hard_fraction
        #: Hard negatives: ``(scene index, column, row)`` where a model fired on no label.
        self.hard: list[tuple[int, float, float]] = []
        self.augment = augment or Augment()
        self._objects = [(i, j) for i, s in enumerate(self.scenes) for j in range(len(s.boxes))]
        areas = np.array([s.scene.width * s.scene.height for s in self.scenes], dtype=float)
        self._scene_p = areas / areas.sum()

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One chip: ``(bands, size, size)`` data, valid mask, boxes and labels in chip pixels."""
        size = self.size
        draw = rng.random()
        if self._objects and draw < self.pos_fraction:
            si, oj = self._objects[rng.integers(len(self._objects))]
            s = self.scenes[si]
            x0, y0, x1, y1 = s.boxes[oj]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            col = int(cx - rng.uniform(0.15, 0.85) * size)
            row = int(cy - rng.uniform(0.15, 0.85) * size)
        elif self.hard and draw < self.pos_fraction + self.hard_fraction:
            si, cx, cy = self.hard[rng.integers(len(self.hard))]
            s = self.scenes[si]
            col = int(cx - rng.uniform(0.15, 0.85) * size)
            row = int(cy - rng.uniform(0.15, 0.85) * size)
        else:
            si = int(rng.choice(len(self.scenes), p=self._scene_p))
            s = self.scenes[si]
            col = int(rng.integers(-size // 4, max(s.scene.width - 3 * size // 4, 1)))
            row = int(rng.integers(-size // 4, max(s.scene.height - 3 * size // 4, 1)))
        assert s.data is not None and s.valid is not None  # noqa: S101 - filtered in __init__
        chip = np.zeros((s.data.shape[0], size, size), np.float32)
        valid = np.zeros((size, size), bool)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + size, s.scene.height), min(col + size, s.scene.width)
        if r1 > r0 and c1 > c0:
            chip[:, r0 - row : r1 - row, c0 - col : c1 - col] = s.data[:, r0:r1, c0:c1]
            valid[r0 - row : r1 - row, c0 - col : c1 - col] = s.valid[r0:r1, c0:c1]
        boxes = s.boxes - np.array([col, row, col, row], dtype=float)
        cxs, cys = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cxs >= 0) & (cxs < size) & (cys >= 0) & (cys < size)
        boxes, labels = boxes[inside], s.labels[inside]
        boxes = np.clip(boxes, 0, size)
        a = self.augment
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
        chip *= valid
        return chip, valid, boxes, labels
