"""ONNX Runtime inference gives what PyTorch gives (sitewatch.imagery.models.runtime)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sitewatch.imagery.errors import UsageError
from sitewatch.imagery.models.architectures import build_model
from sitewatch.imagery.models.checkpoint import load_checkpoint
from sitewatch.imagery.models.inference import predict
from sitewatch.imagery.models.registry import resolve_model, shipped_models
from sitewatch.imagery.models.runtime import OnnxModel, inference_model, onnx_available, resolve_runtime

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")


@pytest.mark.parametrize("shape", [(2, 4, 64, 64), (1, 4, 96, 160), (3, 4, 256, 256)])
@pytest.mark.parametrize("stem_stride", [1, 2])
def test_onnx_outputs_match_torch_for_any_tile_shape(shape: tuple[int, ...], stem_stride: int) -> None:
    torch.manual_seed(0)
    model = build_model("centernet", 4, 2, {"widths": [8, 16, 16, 16], "head_width": 8, "stem_stride": stem_stride}).eval()
    h, w = shape[2] * stem_stride, shape[3] * stem_stride  # multiples of the model's padding
    x = torch.randn(shape[0], shape[1], h, w)
    with torch.inference_mode():
        want = model(x)
    got = OnnxModel(model, threads=1)(x)
    assert len(got) == len(want) == 3
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())


@pytest.mark.skipif("demo" not in shipped_models(), reason="demo model not built")
def test_predict_through_onnx_finds_what_torch_finds() -> None:
    lm = load_checkpoint(resolve_model("demo"))
    rng = np.random.default_rng(0)
    batch = rng.normal(0.3, 0.1, (2, len(lm.spec.bands), 128, 128)).astype(np.float32)
    batch[:, :, 60:66, 60:70] = 2.5  # something bright for the heatmap to peak on
    valid = np.ones((2, 128, 128), bool)
    want = predict(lm.model, batch, valid, 0.05)
    with inference_model(lm.model, lm.checksum, "onnx", 1) as net:
        with inference_model(lm.model, lm.checksum, "onnx", 1) as other:
            assert other is not net  # a borrowed session is not lent twice
        with inference_model(lm.model, lm.checksum, "onnx", 1) as again:
            assert again is other  # a returned one is lent again, not made anew
        got = predict(net, batch, valid, 0.05)
    for g, w in zip(got, want, strict=True):
        assert len(g.scores) == len(w.scores) > 0
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-4)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-2)
        np.testing.assert_array_equal(g.labels, w.labels)


def test_runtime_choice() -> None:
    assert resolve_runtime("auto") == "onnx"
    assert resolve_runtime("auto", device="cuda") == "torch"
    assert resolve_runtime("torch") == "torch"
    with pytest.raises(UsageError, match="--runtime tflite"):
        resolve_runtime("tflite")
