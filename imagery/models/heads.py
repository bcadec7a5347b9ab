"""The top-down pyramid and CenterNet heads that every detector here ends in.

A detector's trunk gives feature maps at rising strides; :class:`CentreHeads` sums them
top-down (1x1 lateral convs, nearest upsampling) to the finest one, smooths the result
(3x3 conv, BatchNorm, ReLU) and runs three heads on it: a per-class centre heatmap
(logits, with CenterNet's low-probability prior), log box size and sub-pixel offset.
Subclasses build their trunk first and then call :meth:`CentreHeads.build_heads`, so the
attributes (``lateral``, ``smooth``, ``heatmap``, ``size``, ``offset``) and the checkpoints'
key names are the same for every architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

#: Initial bias of the heatmap's last layer: an object probability of about 1% everywhere,
#: which keeps the focal loss stable at the start (CenterNet's prior).
HEATMAP_PRIOR_BIAS = -4.6


class CentreHeads(nn.Module):
    """Base of the detectors: the pyramid and the three heads over a trunk's features."""

    lateral: nn.ModuleList
    smooth: nn.Sequential
    heatmap: nn.Sequential
    size: nn.Sequential
    offset: nn.Sequential

    def build_heads(self, feature_channels: Sequence[int], head_width: int, num_classes: int) -> None:
        """Create the pyramid for features of ``feature_channels`` (finest first) and the heads."""
        self.lateral = nn.ModuleList(nn.Conv2d(c, head_width, 1) for c in feature_channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(head_width, head_width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(head_width),
            nn.ReLU(inplace=True),
        )

        def head(cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(head_width, head_width, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(head_width, cout, 1)
            )

        self.heatmap = head(num_classes)
        self.size = head(2)
        self.offset = head(2)
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_PRIOR_BIAS)

    def heads(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heatmap logits, log box size and offset at the finest feature's stride."""
        top = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            top = F.interpolate(top, size=f.shape[-2:], mode="nearest") + lat(f)
        top = self.smooth(top)
        return self.heatmap(top), self.size(top), self.offset(top)
