"""Image backbones: ResNet-18/34/50/101 with torchvision/mmdet parameter names, and a small ResNet.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layerN.0.downsample.0/1``) so an ImageNet checkpoint from a local file loads directly;
mmdet checkpoints carry the same names under an optional ``backbone.`` prefix, which is stripped.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from mmdet3d.utils.checkpoint import LoadReport, load_checkpoint_file, load_model_weights, strip_prefix

from ..builder import BACKBONES
from ..layers import MaxPool2d, set_bn_eval

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "TinyResNet", "load_pretrained", "LoadReport"]

logger = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; (B, C_in, H, W) -> (B, planes, H / stride, W / stride)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, as torchvision v1.5) -> 1x1; output ``planes * 4`` channels."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def load_pretrained(module: nn.Module, checkpoint: str, prefix: str = "backbone.") -> LoadReport:
    """Load a local torchvision or mmdet checkpoint into ``module`` (non-strict) and report.

    Accepts a bare state dict or one under ``state_dict``/``model`` (read with ``weights_only=True``);
    keys starting with ``prefix`` (mmdet detector checkpoints) are kept without it, and when such
    keys exist the others (necks, heads) are ignored. Matching follows ``load_model_weights``: a
    shape mismatch, or no key in common, is a ``CheckpointError``. Missing and unexpected keys
    are logged and returned.
    """
    state = load_checkpoint_file(checkpoint)["state_dict"]
    if any(k.startswith(prefix) for k in state):
        state = strip_prefix(state, prefix)
    report = load_model_weights(module, state, strict=False, source=f"pretrained checkpoint {checkpoint}")
    if report.missing_keys or report.unexpected_keys:
        logger.warning(
            "loaded %s into %s: missing keys %s; unexpected keys %s",
            checkpoint, type(module).__name__, report.missing_keys, report.unexpected_keys,
        )
    return report


@BACKBONES.register_module()
class ResNet(nn.Module):
    """ResNet-18/34/50/101 image backbone; (B, 3, H, W) -> tuple of (B, C_i, H / s_i, W / s_i).

    Stage ``i`` (0-based, ``layer{i+1}``) has stride ``s_i = 4 * 2**i``; ``out_indices`` picks
    the stages returned and ``out_channels`` lists their widths, for the neck to read.
    ``frozen_stages = k`` freezes the stem and the first ``k`` stages (``-1``: nothing);
    ``norm_eval`` keeps every BatchNorm in eval mode during training.
    """

    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
    }

    def __init__(
        self,
        depth: int = 50,
        in_channels: int = 3,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        init_cfg: dict | None = None,
        base_channels: int = 64,
        stage_blocks: Sequence[int] | None = None,
        strides: Sequence[int] = (1, 2, 2, 2),
        stem_kernel_size: int = 7,
    ):
        super().__init__()
        if depth not in self.arch_settings:
            raise KeyError(f"ResNet depth {depth} is not one of {sorted(self.arch_settings)}")
        block, default_blocks = self.arch_settings[depth]
        stage_blocks = tuple(stage_blocks or default_blocks)
        if len(strides) != len(stage_blocks):
            raise ValueError(f"ResNet: {len(stage_blocks)} stages but {len(strides)} strides")
        if any(i < 0 or i >= len(stage_blocks) for i in out_indices):
            raise ValueError(f"ResNet: out_indices {list(out_indices)} outside 0..{len(stage_blocks) - 1}")
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.conv1 = nn.Conv2d(in_channels, base_channels, stem_kernel_size, stride=2,
                               padding=stem_kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)  # index-free without gradient

        channels, stage_widths = base_channels, []
        self.num_stages = len(stage_blocks)
        for i, (num_blocks, stride) in enumerate(zip(stage_blocks, strides)):
            planes = base_channels * 2**i
            layer, channels = self.make_res_layer(block, channels, planes, num_blocks, stride)
            self.add_module(f"layer{i + 1}", layer)
            stage_widths.append(channels)
        self.out_channels = [stage_widths[i] for i in self.out_indices]

        self._freeze_stages()
        self.load_report: LoadReport | None = None
        if init_cfg is not None:
            self.init_weights(init_cfg)

    @staticmethod
    def make_res_layer(block, in_channels: int, planes: int, num_blocks: int, stride: int):
        downsample = None
        out_channels = planes * block.expansion
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        blocks = [block(in_channels, planes, stride, downsample)]
        blocks += [block(out_channels, planes) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks), out_channels

    def init_weights(self, init_cfg: dict) -> LoadReport:
        """``init_cfg = dict(type="Pretrained", checkpoint=path)``: load a local checkpoint."""
        if init_cfg.get("type") != "Pretrained" or "checkpoint" not in init_cfg:
            raise ValueError(f"ResNet init_cfg must be dict(type='Pretrained', checkpoint=path), got {init_cfg!r}")
        self.load_report = load_pretrained(self, init_cfg["checkpoint"])
        self._freeze_stages()
        return self.load_report

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            set_bn_eval(self)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


@BACKBONES.register_module()
class TinyResNet(ResNet):
    """A narrow, shallow ResNet of basic blocks for the embedded dataset's small images.

    Same layout and names as ``ResNet`` (stem, ``layer1..layerK``); ``stage_blocks`` sets the
    number of stages and blocks, ``base_channels`` the width of the first stage (doubling).
    """

    def __init__(
        self,
        base_channels: int = 16,
        stage_blocks: Sequence[int] = (1, 1, 1),
        strides: Sequence[int] | None = None,
        out_indices: Sequence[int] = (1, 2),
        in_channels: int = 3,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        stem_kernel_size: int = 3,
        init_cfg: dict | None = None,
    ):
        super().__init__(
            depth=18,
            in_channels=in_channels,
            out_indices=out_indices,
            frozen_stages=frozen_stages,
            norm_eval=norm_eval,
            init_cfg=init_cfg,
            base_channels=base_channels,
            stage_blocks=stage_blocks,
            strides=strides or (1,) + (2,) * (len(stage_blocks) - 1),
            stem_kernel_size=stem_kernel_size,
        )
