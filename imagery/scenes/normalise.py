"""Pixel normalisation shared by detection and training.

Sentinel-2 exports in the wild are stretched per scene (some saturate at 65535), so the
default maps each band's per-scene percentiles to 0..1, computed on a decimated read of
the whole scene. ``fixed`` applies a known offset and scale instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from sitewatch.imagery.errors import UsageError

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
        pix = data.reshape(bands, -1) if valid.all() else data[:, valid]
        qs = (self.low, self.high)
        lo, hi = np.array([percentiles(band, qs) for band in pix], dtype=np.float32).T
        hi = np.where(hi - lo < 1e-6, lo + 1.0, hi).astype(np.float32)
        return lo, hi


#: Integer-valued data spanning at most this many values takes the histogram path of
#: :func:`percentiles`.
HISTOGRAM_SPAN = 1 << 20


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(values, qs)`` (linear interpolation), exactly, for a 1-D array.

    Integer-valued data (uint8/uint16 rasters read as float) is counted in a histogram
    and each percentile read off its cumulative counts: about 6x faster than
    ``np.percentile``'s partial sort on a million pixels, and the same values, since
    the ranks and the interpolation between them are the same.
    """
    values = np.asarray(values).ravel()
    if values.size == 0:
        raise ValueError("percentiles of no values")
    first = float(values.min())
    span = float(values.max()) - first
    if not (np.isfinite(span) and span < HISTOGRAM_SPAN):
        return np.percentile(values, qs)
    if values.dtype.kind == "f" and not np.array_equal(values, np.floor(values)):
        return np.percentile(values, qs)  # not integer-valued
    # Integers under 2**20 apart: shifted in float64 (or int64), they are exact.
    wide = values.astype(np.float64 if values.dtype.kind == "f" else np.int64)
    cum = np.cumsum(np.bincount((wide - wide.dtype.type(first)).astype(np.int64)))
    n = int(cum[-1])
    out = np.empty(len(qs))
    for j, q in enumerate(qs):
        h = (n - 1) * (q / 100.0)
        k = int(np.floor(h))
        t = h - k
        a = float(np.searchsorted(cum, k, side="right")) + first
        b = float(np.searchsorted(cum, min(k + 1, n - 1), side="right")) + first
        # numpy's _lerp, so the result is bit-for-bit np.percentile's
        out[j] = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t
    return out


def apply(data: np.ndarray, lo: np.ndarray, hi: np.ndarray, valid: np.ndarray | None = None,
          out: np.ndarray | None = None) -> np.ndarray:
    """Map ``(bands, ...)`` raw values to float32 model inputs with per-band ``lo``/``hi``.

    Where ``valid`` (the trailing ``...`` shape) is given, invalid pixels become 0. ``data`` is
    not modified; the result is a new array, or ``out`` (float32, ``data``'s shape) filled in.
    """
    shape = (-1,) + (1,) * (data.ndim - 1)
    lo32 = np.asarray(lo, dtype=np.float32).reshape(shape)
    span = np.asarray(hi, dtype=np.float32).reshape(shape) - lo32
    out = np.subtract(data, lo32, dtype=np.float32, out=out)
    np.divide(out, span, out=out)
    np.clip(out, *CLIP, out=out)
    if valid is not None:
        np.multiply(out, valid, out=out)
    return out


def mirror_beyond(data: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """Fill a ``(bands, h, w)`` array's pixels outside the window ``[y0:y1, x0:x1]``, in place, with the
    window mirrored at its edges (an edge tile or training chip reaching past its scene)."""
    h, w = data.shape[1:]
    if x1 <= x0 or y1 <= y0 or (x0, y0, x1, y1) == (0, 0, w, h):
        return
    data[:] = np.pad(data[:, y0:y1, x0:x1], ((0, 0), (y0, h - y1), (x0, w - x1)), mode="symmetric")
