"""GeneralizedResNet: BEVFusion's BEV decoder backbone, stages of residual basic blocks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..builder import BACKBONES
from .resnet import BasicBlock, ResNet

__all__ = ["GeneralizedResNet"]


@BACKBONES.register_module()
class GeneralizedResNet(nn.Module):
    """(B, C_in, X, Y) BEV -> tuple of stage outputs (B, C_i, X / S_i, Y / S_i).

    ``blocks`` lists the stages as ``[num_blocks, out_channels, stride]``; the first block of a
    stage strides and projects (1x1 conv + BN), the rest keep the shape. ``S_i`` is the product
    of the strides up to stage ``i``. ``out_channels`` lists the widths of the outputs.
    """

    def __init__(self, in_channels: int, blocks: Sequence[Sequence[int]]):
        super().__init__()
        self.in_channels = in_channels
        self.stages = nn.ModuleList()
        channels = in_channels
        for num_blocks, out_channels, stride in blocks:
            layer, channels = ResNet.make_res_layer(BasicBlock, channels, out_channels, num_blocks, stride)
            self.stages.append(layer)
        self.out_channels = [stage_cfg[1] for stage_cfg in blocks]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return tuple(outs)
