"""Fusers: merge the BEV maps of the encoders (same X x Y grid) into one BEV map."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..builder import FUSERS
from ..layers import conv_bn_relu

__all__ = ["ConvFuser", "AddFuser"]


def _check_inputs(name: str, inputs: Sequence[torch.Tensor], in_channels: Sequence[int]) -> None:
    widths = [x.shape[1] for x in inputs]
    if widths != list(in_channels):
        raise ValueError(f"{name} built for input widths {list(in_channels)}, got {widths}")
    if len({x.shape[-2:] for x in inputs}) != 1:
        raise ValueError(f"{name}: BEV maps disagree in size: {[tuple(x.shape[-2:]) for x in inputs]}")


@FUSERS.register_module()
class ConvFuser(nn.Module):
    """[(B, C_i, X, Y), ...] -> concat (B, sum C_i, X, Y) -> 3x3 conv -> BN -> ReLU -> (B, C_out, X, Y)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.fuse = conv_bn_relu(sum(self.in_channels), out_channels, 3)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_inputs("ConvFuser", inputs, self.in_channels)
        return self.fuse(torch.cat(list(inputs), dim=1))


@FUSERS.register_module()
class AddFuser(nn.Module):
    """[(B, C_i, X, Y), ...] -> each 3x3 conv -> BN -> ReLU to C_out -> mean -> (B, C_out, X, Y)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.projections = nn.ModuleList(conv_bn_relu(c, out_channels, 3) for c in self.in_channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_inputs("AddFuser", inputs, self.in_channels)
        return torch.stack([proj(x) for proj, x in zip(self.projections, inputs)]).mean(0)
