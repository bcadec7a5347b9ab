"""Shipped models, selected by name, and model paths."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sitewatch.imagery.errors import ModelError
from sitewatch.imagery.models.spec import read_spec

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
CHECKPOINT_NAME = "model.pt"


def shipped_models() -> dict[str, Path]:
    """Names of the models that ship with sitewatch and their checkpoint paths."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {
        d.name: d / CHECKPOINT_NAME
        for d in sorted(WEIGHTS_DIR.iterdir())
        if (d / CHECKPOINT_NAME).is_file()
    }


def resolve_model(name_or_path: str | Path) -> Path:
    """Return the checkpoint path for a shipped model name, a model directory or a file.

    Raises:
        ModelError: neither a shipped model name nor an existing path.
    """
    text = str(name_or_path)
    shipped = shipped_models()
    if text in shipped:
        return shipped[text]
    p = Path(text)
    if p.is_dir() and (p / CHECKPOINT_NAME).is_file():
        return p / CHECKPOINT_NAME
    if p.is_file():
        return p
    names = ", ".join(shipped) or "none installed"
    raise ModelError(f"--model {text}: no shipped model of that name and no such file (shipped: {names})")


def local_models(dirs: Sequence[Path]) -> list[Path]:
    """Checkpoints of the model directories in ``dirs`` (each a model directory or a parent of some).

    Raises:
        ModelError: a named directory does not exist.
    """
    out: list[Path] = []
    for d in dirs:
        if not d.is_dir():
            raise ModelError(f"{d}: no such directory")
        if (d / CHECKPOINT_NAME).is_file():
            out.append(d / CHECKPOINT_NAME)
        else:
            out += sorted(p / CHECKPOINT_NAME for p in d.iterdir() if (p / CHECKPOINT_NAME).is_file())
    return out


def headline_metrics(metrics: dict[str, Any]) -> str:
    """One line of a model's measured quality from its ``metrics.json``."""
    h = metrics.get("headline") or metrics.get("validation")
    if not isinstance(h, dict) or "f1" not in h:
        return "metrics: none recorded"
    on = h.get("on", "validation")
    return f"P={h['precision']:.2f} R={h['recall']:.2f} F1={h['f1']:.2f} ({on})"


def model_summary(path: Path) -> dict[str, Any]:
    """Spec fields and a metrics line of the checkpoint at ``path`` (read without torch or its weights)."""
    spec = read_spec(path)
    metrics_file = path.parent / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    except (OSError, ValueError):
        metrics = {}
    return {"version": spec.version, "classes": spec.classes, "bands": spec.bands, "pixel_size_m": spec.pixel_size_m,
            "score_threshold": spec.score_threshold, "metrics": headline_metrics(metrics)}
