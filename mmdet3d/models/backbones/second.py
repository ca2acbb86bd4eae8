"""SECOND: the plain convolutional BEV backbone of SECOND/PointPillars/CenterPoint."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..builder import BACKBONES
from ..layers import conv_bn_relu

__all__ = ["SECOND"]


@BACKBONES.register_module()
class SECOND(nn.Module):
    """(B, C_in, X, Y) BEV -> tuple of stage outputs (B, C_i, X / S_i, Y / S_i).

    Stage ``i``: a strided 3x3 conv (``layer_strides[i]``) to ``out_channels[i]`` followed by
    ``layer_nums[i]`` 3x3 convs, each with BN and ReLU. ``S_i`` is the product of the strides.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Sequence[int] = (128, 256),
        layer_nums: Sequence[int] = (5, 5),
        layer_strides: Sequence[int] = (1, 2),
    ):
        super().__init__()
        if not len(out_channels) == len(layer_nums) == len(layer_strides):
            raise ValueError(
                f"SECOND: out_channels {list(out_channels)}, layer_nums {list(layer_nums)} and "
                f"layer_strides {list(layer_strides)} must have the same length"
            )
        self.in_channels = in_channels
        self.out_channels = list(out_channels)
        self.blocks = nn.ModuleList()
        channels = in_channels
        for width, num_layers, stride in zip(out_channels, layer_nums, layer_strides):
            layers = [conv_bn_relu(channels, width, 3, stride=stride)]
            layers += [conv_bn_relu(width, width, 3) for _ in range(num_layers)]
            self.blocks.append(nn.Sequential(*layers))
            channels = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return tuple(outs)
