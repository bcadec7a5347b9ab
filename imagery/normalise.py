"""Pixel normalisation shared by detection and training.

Sentinel-2 exports in the wild are stretched per scene (some saturate at 65535), so the
default maps each band's per-scene percentiles to 0..1, computed on a decimated read of
the whole scene. ``fixed`` applies a known offset and scale instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from imagery.errors import UsageError

#: Normalised values are clipped to this range so saturated pixels stay bright but bounded.
CLIP = (-1.0, 4.0)


@dataclass(frozen=True)
class Normalisation:
    """How raw pixel values become model inputs."""

    method: Literal["scene_percentile", "fixed"] = "scene_percentile"
    low: float = 1.0
    high: float = 99.0
    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in ("scene_percentile", "fixed"):
            raise UsageError(f"normalisation method {self.method!r} is not one of scene_percentile, fixed")
        if self.method == "scene_percentile" and not 0 <= self.low < self.high <= 100:
            raise UsageError(f"normalisation percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")
        if self.method == "fixed" and self.scale == 0:
            raise UsageError("normalisation scale must not be 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints and run.json."""
        return asdict(self)

    def scene_stats(self, data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-band ``(low, high)`` values from a decimated ``(bands, h, w)`` read."""
        bands = data.shape[0]
        if self.method == "fixed":
            lo = np.full(bands, self.offset, dtype=np.float32)
            return lo, lo + np.float32(self.scale)
        if not valid.any():
            return np.zeros(bands, np.float32), np.ones(bands, np.float32)
        pix = data[:, valid]
        lo = np.percentile(pix, self.low, axis=1).astype(np.float32)
        hi = np.percentile(pix, self.high, axis=1).astype(np.float32)
        hi = np.where(hi - lo < 1e-6, lo + 1.0, hi).astype(np.float32)
        return lo, hi


def apply(data: np.ndarray, lo: np.ndarray, hi: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Map ``(bands, ...)`` raw values to float32 model inputs with per-band ``lo``/``hi``.

    Where ``valid`` (the trailing ``...`` shape) is given, invalid pixels become 0. ``data`` is
    not modified; the result is a new array.
    """
    shape = (-1,) + (1,) * (data.ndim - 1)
    lo32 = np.asarray(lo, dtype=np.float32).reshape(shape)
    span = np.asarray(hi, dtype=np.float32).reshape(shape) - lo32
    out = np.subtract(data, lo32, dtype=np.float32)
    np.divide(out, span, out=out)
    np.clip(out, *CLIP, out=out)
    if valid is not None:
        np.multiply(out, valid, out=out)
    return out
