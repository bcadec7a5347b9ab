"""Write a model directory: ``model.pt``, ``model_card.md`` and ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sitewatch.imagery.models.checkpoint import ModelSpec, save_checkpoint
from sitewatch.imagery.models.registry import CHECKPOINT_NAME


def save_model_dir(out: Path, spec: ModelSpec, model: torch.nn.Module, card: str, metrics: dict[str, Any]) -> str:
    """Save the checkpoint, its model card and metrics into ``out``; returns the checksum."""
    out.mkdir(parents=True, exist_ok=True)
    checksum = save_checkpoint(out / CHECKPOINT_NAME, spec, model)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "model_card.md").write_text(card)
    return checksum
