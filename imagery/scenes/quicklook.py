"""Natural-colour pictures of scene pixels: quick-looks and image chips.

Shared by ``detect`` (each scene's quick-look) and the review server (chips), so both show
a scene in the same colours.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.scenes.scene import canonical_band

#: Percentiles of the quick-look stretch.
STRETCH = (2.0, 98.0)


def rgb_bands(band_names: Sequence[str]) -> list[int]:
    """Indexes of the bands to show as red, green, blue: B04, B03, B02 when all three are
    there, else the first three bands, else the first band three times (grey)."""
    upper = [canonical_band(str(b)) for b in band_names]
    if all(b in upper for b in ("B04", "B03", "B02")):
        return [upper.index("B04"), upper.index("B03"), upper.index("B02")]
    return [0, 1, 2] if len(upper) >= 3 else [0, 0, 0]


def quicklook_rgb(data: np.ndarray, band_names: Sequence[str], *, valid: np.ndarray | None = None) -> np.ndarray:
    """Natural-colour quick-look of normalised bands.

    Uses B04, B03, B02 when all three are present, else the first three bands, else the
    first band as grey. Each channel is stretched between its 2nd and 98th percentile.

    Args:
        data: ``(bands, h, w)`` values normalised to roughly 0..1 (they may exceed it).
        band_names: One name per band, e.g. ``("B02", "B03", "B04", "B08")``.
        valid: Optional ``(h, w)`` mask of pixels with data; pixels outside it, and
            non-finite pixels, are black and left out of the stretch.

    Returns:
        ``(h, w, 3)`` uint8 RGB.

    Raises:
        UsageError: The shapes of ``data``, ``band_names`` or ``valid`` do not agree.
    """
    data = np.asarray(data)
    if data.ndim != 3 or data.shape[0] == 0:
        raise UsageError(f"quick-look data must be (bands, h, w), got shape {data.shape}")
    if len(band_names) != data.shape[0]:
        raise UsageError(f"quick-look data has {data.shape[0]} bands but {len(band_names)} band names")
    rgb = data[rgb_bands(band_names)].astype(np.float32)
    mask = np.isfinite(rgb).all(axis=0)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != mask.shape:
            raise UsageError(f"quick-look valid mask has shape {valid.shape}, expected {mask.shape}")
        mask &= valid
    out = np.zeros((*rgb.shape[1:], 3), dtype=np.uint8)
    if not mask.any():
        return out
    for k in range(3):
        band = rgb[k]
        lo, hi = np.percentile(band[mask], STRETCH)
        scaled = (band - lo) / max(float(hi - lo), 1e-12)
        out[..., k] = np.rint(np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255).astype(np.uint8)
    out[~mask] = 0
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB ``(h, w, 3)`` uint8 image as PNG, favouring speed over size (level 1 encodes a
    1024-pixel quick-look ~3x faster than level 6; outputs are read locally)."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
