"""The training loop's parts: batches, optimisation steps, validation and hard-negative mining."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sitewatch.imagery.candidates.matching import Counts, counts_at, match_boxes, match_centres
from sitewatch.imagery.detect.worker import in_core
from sitewatch.imagery.models.inference import predict
from sitewatch.training.chips import Chip, tile_of
from sitewatch.training.dataset import ChipSampler
from sitewatch.training.targets import centernet_loss, make_targets

#: Score thresholds at which validation F1 is computed; the best becomes the model's default.
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.1, 0.91, 0.05))


def make_batch(
    sampler: ChipSampler, rng: np.random.Generator, n: int, num_classes: int, stride: int, mask_invalid: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` augmented chips and their dense CenterNet targets.

    With ``mask_invalid`` the targets carry ``valid`` (heatmap cells with a valid pixel): the loss then
    leaves the rest unsupervised, so a chip's mirrored padding past its scene is never "background".
    """
    chips, targets = [], []
    for _ in range(n):
        chip, valid, boxes, labels = sampler.sample(rng)
        chips.append(chip)
        target = make_targets(boxes, labels, num_classes, sampler.size, stride)
        if mask_invalid:
            out = sampler.size // stride
            target["valid"] = valid[: out * stride, : out * stride].reshape(out, stride, out, stride).any(axis=(1, 3))
            target["valid"] = target["valid"].astype(np.float32)
        targets.append(target)
    x = torch.from_numpy(np.stack(chips))
    t = {k: torch.from_numpy(np.stack([d[k] for d in targets])) for k in targets[0]}
    return x, t


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: dict[str, torch.Tensor], device: torch.device,
) -> float:
    """One optimisation step; returns the loss."""
    x = x.to(device, non_blocking=True)
    t = {k: v.to(device, non_blocking=True) for k, v in t.items()}
    heat, size, off = model(x)
    loss, _parts = centernet_loss(heat, size, off, t)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _predict_chips(
    model: torch.nn.Module, chips: Sequence[Chip], threshold: float, max_box: float, batch: int = 8,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Boxes (window pixels), scores and labels per chip."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            part = chips[i : i + batch]
            x = np.stack([c.data for c in part])
            v = np.stack([c.valid for c in part])
            dets = predict(model, x, v, threshold, max_box=max_box)
            out += [(d.boxes, d.scores, d.labels) for d in dets]
    return out


@dataclass(frozen=True)
class Validation:
    """Validation scores at the best threshold, and F1 at every threshold tried."""

    counts: Counts
    threshold: float
    f1_by_threshold: dict[float, float]

    @property
    def f1(self) -> float:
        """F1 at :attr:`threshold`."""
        return self.counts.f1


def validate(
    model: torch.nn.Module,
    chips: Sequence[Chip],
    truth: dict[int, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    match: str,
    iou: float,
    distance_px: dict[int, float],
    max_box: float,
) -> Validation:
    """Detect on validation tiles (keeping each detection in the tile whose core holds it).

    ``truth`` maps a scene index to its validation boxes and labels (scene pixels);
    ``distance_px`` maps it to the matching distance in that scene's pixels.
    """
    found: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {s: [] for s in truth}
    for chip, (boxes, scores, labels) in zip(chips, _predict_chips(model, chips, THRESHOLDS[0], max_box), strict=True):
        tile = tile_of(chip.window)
        b = boxes + np.array([tile.col_off, tile.row_off] * 2, dtype=float)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        own = in_core(tile, b)
        # only detections on validation pixels count (block splits mask the rest out)
        r = np.clip(cy.astype(int) - tile.row_off, 0, tile.size - 1)
        c = np.clip(cx.astype(int) - tile.col_off, 0, tile.size - 1)
        own &= chip.valid[r, c]
        found.setdefault(chip.window.scene, []).append((b[own], scores[own], labels[own]))
    per_t = {t: Counts(0, 0, 0) for t in THRESHOLDS}
    for si, (gt_boxes, gt_labels) in truth.items():
        parts = found.get(si, [])
        boxes = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 4))
        scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        labels = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
        for k in range(num_classes):
            pb, ps, gb = boxes[labels == k], scores[labels == k], gt_boxes[gt_labels == k]
            if match == "iou":
                m = match_boxes(pb, ps, gb, iou)
            else:
                pc = np.stack([(pb[:, 0] + pb[:, 2]) / 2, (pb[:, 1] + pb[:, 3]) / 2], 1) if len(pb) else np.zeros((0, 2))
                gc = np.stack([(gb[:, 0] + gb[:, 2]) / 2, (gb[:, 1] + gb[:, 3]) / 2], 1) if len(gb) else np.zeros((0, 2))
                m = match_centres(pc, ps, gc, distance_px[si])
            for t in THRESHOLDS:
                per_t[t] = per_t[t] + counts_at(m, ps, len(gb), t)
    best = max(THRESHOLDS, key=lambda t: (per_t[t].f1, -abs(t - 0.4)))
    return Validation(per_t[best], best, {t: c.f1 for t, c in per_t.items()})


def mine_hard_negatives(
    model: torch.nn.Module, chips: Sequence[Chip], max_box: float,
    threshold: float = 0.2, per_chip: int = 8, min_dist_px: float = 12.0,
) -> list[tuple[int, float, float]]:
    """Where ``model`` fires (score >= ``threshold``) farther than ``min_dist_px`` from every label.

    Returns ``(chip index, column, row)`` in window pixels, at most ``per_chip`` per window.
    """
    hard: list[tuple[int, float, float]] = []
    for ci, (chip, (boxes, scores, _labels)) in enumerate(
        zip(chips, _predict_chips(model, chips, threshold, max_box), strict=True)
    ):
        if not len(scores):
            continue
        c = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        if len(chip.boxes):
            g = np.stack([(chip.boxes[:, 0] + chip.boxes[:, 2]) / 2, (chip.boxes[:, 1] + chip.boxes[:, 3]) / 2], 1)
            far = np.linalg.norm(c[:, None] - g[None], axis=2).min(axis=1) > min_dist_px
        else:
            far = np.ones(len(c), bool)
        order = np.argsort(-scores[far])[:per_chip]
        hard.extend((ci, float(x), float(y)) for x, y in c[far][order])
    return hard
