"""GeneralizedLSSFPN: BEVFusion's camera neck (top-down FPN that concatenates, then fuses)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..builder import NECKS
from ..layers import conv_bn_relu

__all__ = ["GeneralizedLSSFPN"]


@NECKS.register_module()
class GeneralizedLSSFPN(nn.Module):
    """Backbone levels (B*N, C_i, H_i, W_i) -> tuple of (B*N, C_out, H_i, W_i), finest first.

    Levels ``start_level .. end_level`` (exclusive; ``-1``: through the last) are used. Going
    from coarse to fine, level ``i+1`` (after its own fusion, or raw for the coarsest) is
    upsampled to level ``i``, concatenated with it and fused by a 1x1 conv then a 3x3 conv.
    One output per used level except the coarsest: with ResNet stages of stride 8, 16, 32 the
    outputs have stride 8 and 16. ``out_channels`` is the width of every output.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, start_level: int = 0, end_level: int = -1):
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.start_level = start_level
        self.end_level = len(self.in_channels) if end_level == -1 else end_level
        if not 0 <= start_level < self.end_level - 1 or self.end_level > len(self.in_channels):
            raise ValueError(
                f"GeneralizedLSSFPN needs at least two levels in start_level..end_level of "
                f"{len(self.in_channels)} inputs, got start_level={start_level}, end_level={end_level}"
            )
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(self.start_level, self.end_level - 1):
            coarser = self.in_channels[i + 1] if i == self.end_level - 2 else out_channels
            self.lateral_convs.append(conv_bn_relu(self.in_channels[i] + coarser, out_channels, 1))
            self.fpn_convs.append(conv_bn_relu(out_channels, out_channels, 3))

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"GeneralizedLSSFPN expects {len(self.in_channels)} levels, got {len(inputs)}")
        laterals = list(inputs[self.start_level:self.end_level])
        for i in range(len(laterals) - 2, -1, -1):
            coarser = F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="bilinear", align_corners=False)
            fused = torch.cat([laterals[i], coarser], dim=1)
            laterals[i] = self.fpn_convs[i](self.lateral_convs[i](fused))
        return tuple(laterals[:-1])
