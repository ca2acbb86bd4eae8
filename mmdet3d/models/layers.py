"""Small building blocks shared by the model stages (the ConvModule pattern: conv -> BN -> ReLU)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaxPool2d", "OneChannelConv1x1", "conv_bn_relu", "deconv_bn_relu", "set_bn_eval", "batchnorm_affine", "fold_batchnorm", "fold_linear_batchnorm"]


class OneChannelConv1x1(nn.Conv2d):
    """``nn.Conv2d(1, C, 1)`` computed as a broadcast multiply-add: the same parameters, state-dict
    keys and values (``addcmul`` rounds like the conv's single product and add), but CPU conv
    kernels are slow on one input channel at full image resolution (BEVFusion's LiDAR depth image:
    20 ms as a conv, 1.4 ms as this, for 12 images of 128 x 352)."""

    def __init__(self, out_channels: int, bias: bool = True):
        super().__init__(1, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"OneChannelConv1x1: expected (B, 1, H, W), got {tuple(x.shape)}")
        weight = self.weight.view(1, -1, 1, 1)
        if self.bias is None:
            return x * weight
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, weight)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose forward without gradient (a frozen teacher, evaluation) is a max over
    strided slices of the ``-inf``-padded map, rows then columns: the same values (NaN included),
    without the CPU kernel's index map (8.4 ms -> 1.9 ms for a ResNet stem's 12 x 16 x 64 x 176).
    With gradient, or dilation, ``ceil_mode`` or ``return_indices``, it is ``nn.MaxPool2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.requires_grad) or self.ceil_mode or self.return_indices or self.dilation not in (1, (1, 1)):
            return super().forward(x)
        kernel, stride, padding = (v if isinstance(v, tuple) else (v, v) for v in (self.kernel_size, self.stride, self.padding))
        x = nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=float("-inf"))
        for dim, k, step in ((-2, kernel[0], stride[0]), (-1, kernel[1], stride[1])):
            span = step * ((x.shape[dim] - k) // step) + 1  # the first tap of every output position
            window = [slice(None)] * x.dim()
            pooled = None
            for i in range(k):
                window[dim] = slice(i, i + span, step)
                pooled = x[tuple(window)] if pooled is None else torch.maximum(pooled, x[tuple(window)])
            x = pooled
        return x.contiguous()


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None) -> nn.Sequential:
    """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride); bias-free conv as BN follows."""
    if padding is None:
        padding = kernel_size // 2
    if in_channels == 1 and kernel_size == 1 and stride == 1 and padding == 0:
        conv: nn.Conv2d = OneChannelConv1x1(out_channels, bias=False)
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    return nn.Sequential(
        conv,
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


def batchnorm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode map of a BatchNorm with running statistics as ``y = x * scale + shift`` per channel."""
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale + (norm.bias if norm.bias is not None else 0.0)
    return scale, shift


def _fold_into(layer: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """Absorb the eval-mode affine map of ``norm`` into ``layer``'s weight and bias (in place)."""
    scale, shift = batchnorm_affine(norm)
    weight = layer.weight.detach()
    # output channels: dim 0 of Conv2d/Linear weights, dim 1 of a ConvTranspose2d's
    view = [1] * weight.dim()
    view[1 if isinstance(layer, nn.ConvTranspose2d) else 0] = -1
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(shift)
    trainable = layer.weight.requires_grad
    layer.weight = nn.Parameter(weight * scale.view(view).to(weight.dtype), requires_grad=trainable)
    layer.bias = nn.Parameter((bias * scale + shift).to(weight.dtype), requires_grad=trainable)


def _foldable(layer: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) or norm.running_mean is None:
        return False  # no running statistics: the norm uses batch statistics even in eval
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels == norm.num_features
    if isinstance(layer, nn.ConvTranspose2d):
        return layer.groups == 1 and layer.out_channels == norm.num_features
    return isinstance(layer, nn.Linear) and layer.out_features == norm.num_features


def fold_linear_batchnorm(layer: nn.Linear | nn.Conv2d, norm: nn.modules.batchnorm._BatchNorm) -> nn.Identity:
    """Fold ``norm`` into ``layer`` (in place) and return the ``nn.Identity`` that replaces it."""
    if not _foldable(layer, norm):
        raise ValueError(f"cannot fold {type(norm).__name__}({norm.num_features}) into {layer}")
    _fold_into(layer, norm)
    return nn.Identity().train(norm.training)


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv into that conv, for a frozen (eval-only)
    model: the deploy form, same outputs up to float round-off, without the per-channel affine pass.

    A norm is folded when it is the child registered right after a ``Conv2d`` / ``ConvTranspose2d``
    / ``Linear`` with its channel count, which is how ``conv_bn_relu``, the ResNet blocks and stems
    are written (each applies the norm to that conv's output); modules whose pairs are not adjacent
    children define ``fold_batchnorm()`` themselves. The folded norm becomes ``nn.Identity``, so
    the state dict loses its keys: fold after loading weights. Returns the number of norms folded.
    """
    if module.training:
        raise ValueError("fold_batchnorm: the model must be in eval mode (frozen BatchNorm statistics)")
    own = getattr(module, "fold_batchnorm", None)
    if callable(own):
        return own()
    folded, previous = 0, None
    for name, child in list(module.named_children()):
        if previous is not None and _foldable(previous, child):
            _fold_into(previous, child)
            setattr(module, name, nn.Identity().eval())
            folded += 1
            previous = None
            continue
        folded += fold_batchnorm(child)
        previous = child
    return folded
