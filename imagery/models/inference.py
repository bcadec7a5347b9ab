"""Run a detector on a batch of normalised tiles (the model cache lives in sitewatch.imagery.detect.worker)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sitewatch.imagery.models.architectures import RawDetections, decode


@torch.inference_mode()
def predict(
    model: Any, batch: np.ndarray, valid: np.ndarray, score_threshold: float, tta: bool = False,
    max_box: float = 256.0,
) -> list[RawDetections]:
    """Detect objects in a ``(N, C, H, W)`` batch of normalised tiles with ``(N, H, W)`` masks.

    ``model`` is a PyTorch module or its :class:`sitewatch.imagery.models.runtime.OnnxModel`.

    Heights and widths need not be multiples of the model's stride: inputs are padded
    to a multiple of the trunk's downsampling (padding is invalid, so it yields nothing) and boxes stay in the
    input's pixel coordinates. With ``tta`` the centre heatmap is averaged over the
    input and its horizontal and vertical flips (3x the compute, steadier scores).
    """
    n, c, h, w = batch.shape
    multiple = getattr(model, "pad_multiple", 16)
    stride = getattr(model, "stride", 2)
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        batch = np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)))
        valid = np.pad(valid, ((0, 0), (0, ph), (0, pw)))
    device = getattr(model, "device", None) or next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    heat, size, offset = model(x)
    if tta:
        prob = torch.sigmoid(heat)
        for dims in ((3,), (2,)):
            prob = prob + torch.sigmoid(model(torch.flip(x, dims))[0]).flip(dims)
        heat = torch.logit(prob / 3, eps=1e-6)
    return decode(heat.cpu(), size.cpu(), offset.cpu(), torch.from_numpy(valid), score_threshold, stride=stride, max_box=max_box)


def touches_nodata(boxes: np.ndarray, nodata: np.ndarray, margin: float) -> np.ndarray:
    """Which ``(K, 4)`` pixel boxes ``x0, y0, x1, y1``, grown by ``margin`` pixels, overlap ``nodata``.

    ``nodata`` is a ``(H, W)`` boolean mask of no-data pixels in the boxes' pixel coordinates
    (leave padding beyond the scene out of it: an object at the scene's edge is not cut by no-data).
    """
    hit = np.zeros(len(boxes), dtype=bool)
    if not len(boxes) or not nodata.any():
        return hit
    h, w = nodata.shape
    # A summed-area table answers "any no-data in this rectangle" in O(1) per box.
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = nodata.cumsum(0).cumsum(1)
    x0 = np.clip(np.floor(boxes[:, 0] - margin), 0, w).astype(np.intp)
    y0 = np.clip(np.floor(boxes[:, 1] - margin), 0, h).astype(np.intp)
    x1 = np.clip(np.ceil(boxes[:, 2] + margin), 0, w).astype(np.intp)
    y1 = np.clip(np.ceil(boxes[:, 3] + margin), 0, h).astype(np.intp)
    return (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) > 0
