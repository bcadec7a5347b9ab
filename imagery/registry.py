"""Shipped models, selected by name, and model paths."""

from __future__ import annotations

from pathlib import Path

from imagery.errors import ModelError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
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
