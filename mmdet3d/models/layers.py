"""Small building blocks shared by the model stages (the ConvModule pattern: conv -> BN -> ReLU)."""
from __future__ import annotations

from torch import nn

__all__ = ["conv_bn_relu", "deconv_bn_relu", "set_bn_eval"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None) -> nn.Sequential:
    """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride); bias-free conv as BN follows."""
    if padding is None:
        padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def deconv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """(B, C_in, H, W) -> (B, C_out, H * stride, W * stride) with a stride x stride transposed conv."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, stride, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def set_bn_eval(module: nn.Module) -> None:
    """Put every BatchNorm below ``module`` in eval mode (frozen running statistics)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
