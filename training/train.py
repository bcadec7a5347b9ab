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
    for step in range(settings.steps):
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


def predict_scene(model: torch.nn.Module, ls: LabelledScene, score_threshold: float) -> RawDetections:
    """Detect on a whole in-memory scene (for validation; ``detect`` tiles instead)."""
    assert ls.data is not None and ls.valid is not None  # noqa: S101 - caller loads the scene
    model.eval()
    return predict(model, ls.data[None], ls.valid[None], score_threshold)[0]
