"""SECONDFPN: brings every SECOND stage to one resolution and concatenates."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..builder import NECKS
from ..layers import conv_bn_relu, deconv_bn_relu

__all__ = ["SECONDFPN"]


@NECKS.register_module()
class SECONDFPN(nn.Module):
    """Stage outputs (B, C_i, X_i, Y_i) -> (B, sum(out_channels), X_0 * u_0, Y_0 * u_0).

    Stage ``i`` is resampled by ``upsample_strides[i]``: a transposed conv when >= 1, a strided
    conv of stride ``1 / u_i`` when < 1; all must land on the same grid. ``out_channels`` (the
    attribute) is the concatenated width.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int] = (256, 256),
                 upsample_strides: Sequence[float] = (1, 2)):
        super().__init__()
        if not len(in_channels) == len(out_channels) == len(upsample_strides):
            raise ValueError(
                f"SECONDFPN: in_channels {list(in_channels)}, out_channels {list(out_channels)} and "
                f"upsample_strides {list(upsample_strides)} must have the same length"
            )
        self.in_channels = list(in_channels)
        self.deblocks = nn.ModuleList()
        for c_in, c_out, stride in zip(in_channels, out_channels, upsample_strides):
            if stride >= 1:
                self.deblocks.append(deconv_bn_relu(c_in, c_out, int(stride)))
            else:
                down = round(1 / stride)
                self.deblocks.append(conv_bn_relu(c_in, c_out, down, stride=down, padding=0))
        self.out_channels = int(sum(out_channels))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        ups = [deblock(x) for deblock, x in zip(self.deblocks, inputs)]
        if len({u.shape[-2:] for u in ups}) != 1:
            raise ValueError(f"SECONDFPN: resampled stages disagree in size: {[tuple(u.shape[-2:]) for u in ups]}")
        return torch.cat(ups, dim=1)
