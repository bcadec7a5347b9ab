"""Copy-paste augmentation: labelled objects cut out of their windows and pasted onto similar ground.

A few hundred labelled ships are few; pasting them at new places in other chips multiplies
the positions, backgrounds and neighbours the model sees them in (Ghiasi et al., "Simple
Copy-Paste", 2021). Two choices keep the pasted chips plausible:

* **The object's own pixels only.** Its mask is cut from the pixels themselves: those of
  its box that differ from the ring of pixels around the box (the object's background)
  by more than ``3 x`` that ring's spread. This needs no instance masks, so it works for
  every label source (GeoJSON boxes, COCO, review exports); ships and kilns stand out
  from water and fields in normalised Sentinel-2 bands.
* **Onto ground like its own.** A place is taken only where every band's median is near
  the ring's median and the ground is flat (a ship cut from water goes onto water, not a
  quay), and where it overlaps no labelled object. The object's pixels are shifted by
  the difference of the two backgrounds, so it keeps its contrast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sitewatch.training.chips import Chip

#: Pixels of margin around a box whose values make up the object's background ring.
RING_PX = 3
#: A pixel belongs to the object where it differs from the ring's median by this many ring spreads.
MASK_SPREADS = 3.0
#: The least spread assumed for a ring (normalised units), so flat water does not cut noise.
MIN_SPREAD = 0.02
#: Largest per-band difference between the ring's median and the target ground's median.
MATCH_TOLERANCE = 0.08
#: Largest spread (normalised units, median over bands) of the ground an object goes onto.
FLAT_SPREAD = 0.06
#: Places tried per pasted object.
TRIES = 12


@dataclass(frozen=True)
class Sprite:
    """One labelled object's pixels, its mask and its background, cut from a window."""

    data: np.ndarray  # (bands, h, w) normalised pixels of the box and its ring
    mask: np.ndarray  # (h, w) the object's own pixels
    background: np.ndarray  # (bands,) median of the ring
    box: tuple[float, float, float, float]  # the label's box inside ``data``
    label: int


def _spread(x: np.ndarray) -> np.ndarray:
    """Per-band median absolute deviation of ``(bands, n)`` values, scaled to a std."""
    med = np.median(x, axis=1, keepdims=True)
    return 1.4826 * np.median(np.abs(x - med), axis=1)


def cut_sprites(chips: Sequence[Chip], max_side: int = 64) -> list[Sprite]:
    """Sprites of every labelled object that lies wholly inside its window, on valid pixels."""
    sprites: list[Sprite] = []
    for c in chips:
        if c.window.kind != "object" or c.missing is not None:
            continue
        n = c.window.size
        for box, label in zip(c.boxes, c.labels, strict=True):
            # each object once: from the window it anchors, not its neighbours' windows
            centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            if not len(c.anchors) or np.abs(c.anchors[:, :2] - centre).sum(axis=1).min() > 1.0:
                continue
            x0, y0 = int(np.floor(box[0])) - RING_PX, int(np.floor(box[1])) - RING_PX
            x1, y1 = int(np.ceil(box[2])) + RING_PX, int(np.ceil(box[3])) + RING_PX
            if x0 < 0 or y0 < 0 or x1 > n or y1 > n or max(x1 - x0, y1 - y0) > max_side:
                continue
            if not c.valid[y0:y1, x0:x1].all():
                continue
            data = c.data[:, y0:y1, x0:x1]
            ring = np.ones(data.shape[1:], bool)
            ring[RING_PX:-RING_PX, RING_PX:-RING_PX] = False
            bg_px = data[:, ring]
            background = np.median(bg_px, axis=1)
            spread = np.maximum(_spread(bg_px), MIN_SPREAD)
            diff = np.abs(data - background[:, None, None]) / spread[:, None, None]
            mask = (diff > MASK_SPREADS).any(axis=0) & ~ring
            if not mask.any():
                continue
            local = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
            sprites.append(Sprite(data.copy(), mask, background.astype(np.float32), local, int(label)))
    return sprites


def paste(
    chip: np.ndarray, valid: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
    sprites: Sequence[Sprite], rng: np.random.Generator, count: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste up to ``count`` random sprites onto matching flat ground of ``chip``.

    Returns the chip (a new array), boxes and labels with the pasted objects added.
    Objects that find no matching place in :data:`TRIES` tries are left out.
    """
    chip = chip.copy()
    size = chip.shape[-1]
    taken = [tuple(b) for b in boxes]
    new_boxes, new_labels = [], []
    for _ in range(count):
        s = sprites[int(rng.integers(len(sprites)))]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        data, mask, box = s.data, s.mask, s.box
        for _r in range(k):
            # 90 degrees counter-clockwise, as the sampler's dihedral: (x, y) -> (y, width - x)
            width = mask.shape[1]
            data, mask = np.rot90(data, 1, axes=(1, 2)), np.rot90(mask)
            box = (box[1], width - box[2], box[3], width - box[0])
        if flip:
            width = mask.shape[1]
            data, mask = data[:, :, ::-1], mask[:, ::-1]
            box = (width - box[2], box[1], width - box[0], box[3])
        h, w = mask.shape
        if h >= size or w >= size:
            continue
        for _try in range(TRIES):
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if not valid[y : y + h, x : x + w].all():
                continue
            ground = chip[:, y : y + h, x : x + w].reshape(chip.shape[0], -1)
            med = np.median(ground, axis=1)
            if np.abs(med - s.background).max() > MATCH_TOLERANCE or np.median(_spread(ground)) > FLAT_SPREAD:
                continue
            bx = (x + box[0], y + box[1], x + box[2], y + box[3])
            if any(bx[0] < t[2] and t[0] < bx[2] and bx[1] < t[3] and t[1] < bx[3] for t in taken):
                continue
            patch = chip[:, y : y + h, x : x + w]
            shifted = data + (med - s.background)[:, None, None]
            patch[:, mask] = shifted[:, mask]
            taken.append(bx)
            new_boxes.append(bx)
            new_labels.append(s.label)
            break
    if new_boxes:
        boxes = np.concatenate([boxes.reshape(-1, 4), np.array(new_boxes, dtype=float)])
        labels = np.concatenate([labels, np.array(new_labels, dtype=labels.dtype)])
    return chip, boxes, labels
