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
