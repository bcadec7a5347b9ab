"""The training loop: seeded, CPU or CUDA, with periodic validation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from imagery.inference import predict
from imagery.models import RawDetections
from training.dataset import ChipSampler, LabelledScene
from training.targets import centernet_loss, make_targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings."""

    chip_size: int = 128
    batch_size: int = 16
    steps: int = 2000
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    #: Fractions of training after which the model's false positives on the training
    #: scenes become hard-negative chips.
    mine_at: tuple[float, ...] = (0.35, 0.65)


def _batch(sampler: ChipSampler, rng: np.random.Generator, n: int, num_classes: int, stride: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    chips, targets = [], []
    for _ in range(n):
        chip, _valid, boxes, labels = sampler.sample(rng)
        chips.append(chip)
        targets.append(make_targets(boxes, labels, num_classes, sampler.size, stride))
    x = torch.from_numpy(np.stack(chips))
    t = {k: torch.from_numpy(np.stack([d[k] for d in targets])) for k in targets[0]}
    return x, t


def train_model(
    model: torch.nn.Module,
    sampler: ChipSampler,
    num_classes: int,
    settings: TrainSettings,
    on_step: Callable[[int, float], None] | None = None,
) -> torch.nn.Module:
    """Train ``model`` in place for ``settings.steps`` steps of random chips."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    stride = getattr(model, "stride", 2)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.1)
    model.train()
    start = time.monotonic()
    mine_steps = {int(f * settings.steps) for f in settings.mine_at}
    for step in range(settings.steps):
        if step in mine_steps:
            sampler.hard = mine_hard_negatives(model, sampler.scenes)
            model.train()
            log.info("step %d: %d hard negatives", step, len(sampler.hard))
        x, t = _batch(sampler, rng, settings.batch_size, num_classes, stride)
        heat, size, off = model(x)
        loss, parts = centernet_loss(heat, size, off, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step:
            on_step(step, float(loss.detach()))
        if step % 100 == 0:
            log.info("step %d loss %.3f %s %.0fs", step, float(loss.detach()), parts, time.monotonic() - start)
    model.eval()
    return model


def mine_hard_negatives(
    model: torch.nn.Module, scenes: list[LabelledScene], threshold: float = 0.2, per_scene: int = 150,
    min_dist_px: float = 12.0,
) -> list[tuple[int, float, float]]:
    """Where ``model`` fires (score >= ``threshold``) farther than ``min_dist_px`` from every label."""
    hard: list[tuple[int, float, float]] = []
    for si, ls in enumerate(scenes):
        det = predict_scene(model, ls, threshold)
        if not len(det.scores):
            continue
        c = np.stack([(det.boxes[:, 0] + det.boxes[:, 2]) / 2, (det.boxes[:, 1] + det.boxes[:, 3]) / 2], 1)
        if len(ls.boxes):
            g = np.stack([(ls.boxes[:, 0] + ls.boxes[:, 2]) / 2, (ls.boxes[:, 1] + ls.boxes[:, 3]) / 2], 1)
            far = np.linalg.norm(c[:, None] - g[None], axis=2).min(axis=1) > min_dist_px
        else:
            far = np.ones(len(c), bool)
        order = np.argsort(-det.scores[far])[:per_scene]
        hard.extend((si, float(x), float(y)) for x, y in c[far][order])
    return hard


def predict_scene(model: torch.nn.Module, ls: LabelledScene, score_threshold: float) -> RawDetections:
    """Detect on a whole in-memory scene (for validation; ``detect`` tiles instead)."""
    assert ls.data is not None and ls.valid is not None  # noqa: S101 - caller loads the scene
    model.eval()
    return predict(model, ls.data[None], ls.valid[None], score_threshold)[0]
