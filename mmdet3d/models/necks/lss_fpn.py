"""LSSFPN: BEVFusion's BEV decoder neck joining a coarse and a fine stage."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..builder import NECKS
from ..layers import conv_bn_relu

__all__ = ["LSSFPN"]


@NECKS.register_module()
class LSSFPN(nn.Module):
    """Stage outputs -> (B, out_channels, X_f * scale_factor, Y_f * scale_factor).

    ``in_indices = [coarse, fine]`` select two stages of the backbone (``in_channels`` lists the
    widths of all stages, as the backbone's ``out_channels``). The coarse stage is upsampled to
    the fine one (bilinear), concatenated, fused by a 1x1 then a 3x3 conv; ``scale_factor > 1``
    then upsamples the result and applies one more 3x3 conv.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, in_indices: Sequence[int] = (-1, 0),
                 scale_factor: int = 1):
        super().__init__()
        self.in_channels = list(in_channels)
        self.in_indices = tuple(in_indices)
        self.out_channels = out_channels
        self.scale_factor = scale_factor
        joined = self.in_channels[self.in_indices[0]] + self.in_channels[self.in_indices[1]]
        self.fuse = nn.Sequential(conv_bn_relu(joined, out_channels, 1), conv_bn_relu(out_channels, out_channels, 3))
        self.upsample = None
        if scale_factor > 1:
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=True),
                conv_bn_relu(out_channels, out_channels, 3),
            )

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        coarse, fine = inputs[self.in_indices[0]], inputs[self.in_indices[1]]
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=True)
        x = self.fuse(torch.cat([coarse, fine], dim=1))
        return x if self.upsample is None else self.upsample(x)
