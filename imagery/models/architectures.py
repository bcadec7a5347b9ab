"""Detector architectures, shared by detection (``imagery``) and ``training``.

``centernet``: a ResNet trunk built from torchvision's ``BasicBlock`` with a light
top-down pyramid back to stride 2, and CenterNet-style heads (a per-class centre
heatmap, box size, sub-pixel offset). Why this shape:

* ships in 10 m imagery are mostly 5-20 pixels: anchor-based detectors at stride 8+ miss them,
  a centre heatmap at stride 2 does not, and needs no anchor tuning;
* kilns in sub-metre imagery are 30-80 pixels: the same heads with the stride-16 trunk
  see enough context, and the size head regresses log-size so both scales train alike;
* it trains from scratch on a CPU in minutes, and has no post-processing beyond a 3x3
  max-pool peak search, which keeps the output deterministic and seam-friendly.

``efficient-centernet``: the same pyramid and heads on an EfficientNet-Lite0 encoder
(:mod:`sitewatch.imagery.models.efficientnet`) that training can start from ImageNet
weights (``model.pretrained: imagenet``): a few hundred labelled objects teach a trunk
little beyond contrast, a pretrained one brings edges, textures and shapes.

``centernet-ensemble``: several detectors of one output stride averaged (``sitewatch ensemble``):
seeds of one recipe, or recipes with other encoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision.models.resnet import BasicBlock

from sitewatch.imagery.errors import ModelError
from sitewatch.imagery.models.efficientnet import EfficientCenterNet
from sitewatch.imagery.models.heads import CentreHeads

ARCHITECTURES = ("centernet", "centernet-ensemble", "efficient-centernet")
#: What an ensemble's members may be.
MEMBER_ARCHITECTURES = ("centernet", "efficient-centernet")


def _layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    layers = [BasicBlock(cin, cout, stride, down)]
    layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CenterNet(CentreHeads):
    """Centre-heatmap detector with output stride 2.

    Args:
        in_channels: number of input bands.
        num_classes: number of object classes.
        widths: channels of the four trunk stages (strides 2, 4, 8, 16).
        blocks: residual blocks per stage.
        head_width: channels of the pyramid and heads.
        stem_stride: stride of the first convolution: 1 gives centre heatmaps at stride 2
            (small objects: ships at 10 m); 2 gives stride 4 and a trunk that sees twice
            as far, at a quarter of the compute (large objects: kilns at 1 m).
    """

    #: Output stride of the heads (input pixels per heatmap cell).
    stride: int = 2

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (32, 64, 96, 128),
        blocks: tuple[int, ...] = (1, 2, 2, 1),
        head_width: int = 64,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        self.stride = 2 * stem_stride
        #: Inputs are padded to a multiple of this (the trunk's total downsampling).
        self.pad_multiple = 16 * stem_stride
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        cin = widths[0]
        for w, b in zip(widths, blocks, strict=True):
            stages.append(_layer(cin, w, b, 2))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.build_heads(widths, head_width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return heatmap logits ``(N, C, H/2, W/2)``, log box size ``(N, 2, ...)`` and offset."""
        feats = []
        h = self.stem(x)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return self.heads(feats)


def ensemble_members(members: int = 2, member_archs: list[str] | None = None,
                     member_params: list[dict[str, Any]] | None = None, **params: Any) -> list[tuple[str, dict[str, Any]]]:
    """Each member's ``(architecture, parameters)`` from an ensemble's architecture parameters.

    Takes the arguments of :class:`CenterNetEnsemble` (a ``centernet-ensemble`` spec's
    ``arch_params``): ``members`` CenterNets of ``params``, or ``member_archs`` with their
    ``member_params``.

    Raises:
        ValueError: fewer than 2 members, or lists that do not describe each member.
    """
    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    if member_archs is None:
        return [("centernet", dict(params)) for _ in range(members)]
    if params or len(member_archs) != members or len(member_params or []) != members:
        raise ValueError("member_archs and member_params must list each of the members, without other parameters")
    if any(a not in MEMBER_ARCHITECTURES for a in member_archs):
        raise ValueError(f"members must be {' or '.join(MEMBER_ARCHITECTURES)}, got {member_archs}")
    return [(a, dict(p)) for a, p in zip(member_archs, member_params or [], strict=True)]


class CenterNetEnsemble(nn.Module):
    """Several centre-heatmap detectors, trained apart, run as one model.

    Their centre probabilities are averaged and returned as logits, as one CenterNet
    returns them; box sizes and offsets are averaged. Members trained on a few hundred
    objects disagree mostly on their false alarms, so the average keeps fewer of them
    (see ``sitewatch.training.ensemble``).

    Members are either ``members`` CenterNets of one shape (``**params``, other seeds of one
    recipe), or one model per entry of ``member_archs`` with its own ``member_params`` (for
    example a from-scratch ``centernet`` and an ImageNet ``efficient-centernet``); all must
    have the same output stride.

    Args:
        members: how many members.
        member_archs: each member's architecture (``centernet`` or ``efficient-centernet``);
            default: all ``centernet`` with ``**params``.
        member_params: each member's architecture parameters (with ``member_archs``).
        **params: the members' :class:`CenterNet` parameters (without ``member_archs``).
    """

    def __init__(self, in_channels: int, num_classes: int, members: int = 2,
                 member_archs: list[str] | None = None, member_params: list[dict[str, Any]] | None = None,
                 **params: Any) -> None:
        super().__init__()
        each = ensemble_members(members, member_archs, member_params, **params)
        if member_archs is None:
            nets = [CenterNet(in_channels, num_classes, **p) for _, p in each]
        else:
            nets = [build_model(a, in_channels, num_classes, p) for a, p in each]
        strides = {n.stride for n in nets}
        if len(strides) != 1:
            raise ValueError(f"members must share one output stride, got {sorted(strides)}")
        self.members = nn.ModuleList(nets)
        self.stride = nets[0].stride
        self.pad_multiple = math.lcm(*(n.pad_multiple for n in nets))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the members' mean centre probability as logits, mean log box size and mean offset."""
        outs = [m(x) for m in self.members]
        prob = torch.stack([torch.sigmoid(o[0]) for o in outs]).mean(0).clamp(1e-6, 1 - 1e-6)
        size = torch.stack([o[1] for o in outs]).mean(0)
        offset = torch.stack([o[2] for o in outs]).mean(0)
        return torch.log(prob) - torch.log1p(-prob), size, offset


@dataclass(frozen=True)
class RawDetections:
    """Detections of one tile in tile pixel coordinates (``x0, y0, x1, y1``)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def build_model(arch: str, in_channels: int, num_classes: int, params: dict[str, Any] | None = None) -> nn.Module:
    """Build an untrained model of architecture ``arch``."""
    params = dict(params or {})
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    for key in ("widths", "blocks"):
        if key in params:
            params[key] = tuple(params[key])
    try:
        if arch == "centernet-ensemble":
            return CenterNetEnsemble(in_channels, num_classes, **params)
        if arch == "efficient-centernet":
            return EfficientCenterNet(in_channels, num_classes, **params)
        return CenterNet(in_channels, num_classes, **params)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"bad parameters for architecture {arch}: {exc}") from None


@torch.inference_mode()
def decode(
    heat_logits: torch.Tensor,
    size: torch.Tensor,
    offset: torch.Tensor,
    valid: torch.Tensor,
    score_threshold: float,
    max_per_tile: int = 300,
    stride: int = CenterNet.stride,
    max_box: float = 256.0,
) -> list[RawDetections]:
    """Turn head outputs into boxes: local maxima of the heatmap above ``score_threshold``.

    ``valid`` is a ``(N, H, W)`` boolean mask at input resolution; peaks on invalid
    (nodata or padding) pixels are dropped, so nodata never yields detections. Box sides
    are clamped to ``1..max_box`` pixels.
    """
    heat = torch.sigmoid(heat_logits)
    peaks = heat == F.max_pool2d(heat, 3, 1, 1)
    vmask = F.max_pool2d((~valid).float().unsqueeze(1), stride, stride) == 0
    # -1, not 0: a score threshold of 0 must not let masked (non-peak, nodata) cells through.
    heat = torch.where(peaks & vmask[:, :, : heat.shape[2], : heat.shape[3]], heat, -1.0)
    out = []
    n, c, h, w = heat.shape
    for i in range(n):
        flat = heat[i].reshape(-1)
        k = min(max_per_tile, flat.numel())
        scores, idx = torch.topk(flat, k)
        keep = scores >= score_threshold
        scores, idx = scores[keep], idx[keep]
        cls = idx // (h * w)
        pix = idx % (h * w)
        ys = (pix // w).float()
        xs = (pix % w).float()
        off = offset[i, :, ys.long(), xs.long()]
        cx = (xs + off[0] + 0.5) * stride
        cy = (ys + off[1] + 0.5) * stride
        wh = torch.exp(size[i, :, ys.long(), xs.long()]).clamp(1.0, max_box)
        boxes = torch.stack([cx - wh[0] / 2, cy - wh[1] / 2, cx + wh[0] / 2, cy + wh[1] / 2], 1)
        out.append(RawDetections(boxes.numpy().astype(np.float64), scores.numpy().astype(np.float32), cls.numpy().astype(np.int64)))
    return out
