"""SimDistill's geometry compensation module (DESIGN.md 5.5): ``L' = L + GCM(L)`` on a BEV map.

Both layers return the compensated map ``x + delta(x)`` (the residual is part of the layer) and
start as small corrections: the sampling offsets are initialised to zero, so at initialisation
every sampling point sits at its reference cell.

- ``DeformableBEVAttention``: one deformable self-attention layer (8 heads, 20 points per head in
  the release): queries are the BEV cells plus a learned position embedding (a row and a column
  embedding, C/2 each), each head samples the value map at ``cell + offset_p(query)`` and sums
  the samples with softmax weights over its points.
- ``ModulatedDeformConvBEV``: ``num_layers`` modulated deformable 3x3 convolutions (DCNv2: offsets
  and sigmoid masks from a plain 3x3 conv) with BatchNorm and ReLU (the paper's alternative).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mmdet3d.ops.deformable import deformable_attention_sampling, modulated_deform_conv2d

from ..builder import BEV_LAYERS

__all__ = ["DeformableBEVAttention", "ModulatedDeformConvBEV"]


@BEV_LAYERS.register_module()
class DeformableBEVAttention(nn.Module):
    """(B, C, X, Y) -> (B, C, X, Y): ``x + out_proj(deformable attention(x + pos))``.

    ``bev_size = (X, Y)`` sizes the learned position embedding; ``C`` must divide by ``num_heads``
    (and be even). Offsets are in cells (``offset_scale`` multiplies the predicted ones).
    """

    def __init__(self, *, in_channels: int, bev_size: Sequence[int], num_heads: int = 8, num_points: int = 20,
                 offset_scale: float = 1.0):
        super().__init__()
        if in_channels % num_heads or in_channels % 2:
            raise ValueError(f"DeformableBEVAttention: {in_channels} channels must be even and divide by {num_heads} heads")
        self.in_channels = self.out_channels = in_channels
        self.bev_size = tuple(int(s) for s in bev_size)
        self.num_heads, self.num_points, self.offset_scale = num_heads, num_points, float(offset_scale)
        self.row_embed = nn.Parameter(torch.randn(self.bev_size[0], in_channels // 2) * 0.02)  # along x
        self.col_embed = nn.Parameter(torch.randn(self.bev_size[1], in_channels // 2) * 0.02)  # along y
        self.sampling_offsets = nn.Linear(in_channels, num_heads * num_points * 2)
        self.attention_weights = nn.Linear(in_channels, num_heads * num_points)
        self.value_proj = nn.Linear(in_channels, in_channels)
        self.output_proj = nn.Linear(in_channels, in_channels)
        for layer in (self.sampling_offsets, self.attention_weights):  # start at the reference cell, uniform weights
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def position_embedding(self) -> torch.Tensor:
        """(X*Y, C): row embedding of x concatenated with column embedding of y, x-major cells."""
        size_x, size_y = self.bev_size
        rows = self.row_embed[:, None].expand(size_x, size_y, -1)
        cols = self.col_embed[None].expand(size_x, size_y, -1)
        return torch.cat([rows, cols], dim=-1).reshape(size_x * size_y, -1)

    def reference_points(self, device, dtype) -> torch.Tensor:
        """(X*Y, 2) cell coordinates ``(x, y)`` of every query, x-major."""
        size_x, size_y = self.bev_size
        xs, ys = torch.meshgrid(torch.arange(size_x, device=device, dtype=dtype),
                                torch.arange(size_y, device=device, dtype=dtype), indexing="ij")
        return torch.stack([xs, ys], dim=-1).reshape(-1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, channels, size_x, size_y = x.shape
        if (size_x, size_y) != self.bev_size or channels != self.in_channels:
            raise ValueError(f"DeformableBEVAttention built for ({self.in_channels}, {self.bev_size}), got {tuple(x.shape[1:])}")
        heads, points = self.num_heads, self.num_points
        tokens = x.flatten(2).transpose(1, 2)  # (B, C, X, Y) -> (B, Q, C), Q = X*Y
        query = tokens + self.position_embedding()
        offsets = self.sampling_offsets(query).view(batch_size, -1, heads, points, 2) * self.offset_scale
        weights = self.attention_weights(query).view(batch_size, -1, heads, points).softmax(dim=-1)
        locations = self.reference_points(x.device, x.dtype).view(1, -1, 1, 1, 2) + offsets  # (B, Q, M, P, 2)
        # (B, Q, C) -> (B, M, C/M, X, Y): per-head value maps
        value = self.value_proj(tokens).transpose(1, 2).reshape(batch_size, heads, channels // heads, size_x, size_y)
        attended = deformable_attention_sampling(value, locations, weights)  # (B, Q, C)
        out = self.output_proj(attended).transpose(1, 2).reshape(batch_size, channels, size_x, size_y)
        return x + out


class _ModulatedDeformConv(nn.Module):
    """One DCNv2 3x3 layer: offsets (2K) and masks (K) from a 3x3 conv initialised to zero."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        taps = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.offset_mask = nn.Conv2d(in_channels, 3 * taps, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        self.taps = taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.offset_mask(x)
        offset, mask = out[:, : 2 * self.taps], out[:, 2 * self.taps:].sigmoid()
        return modulated_deform_conv2d(x, offset, mask, self.weight)


@BEV_LAYERS.register_module()
class ModulatedDeformConvBEV(nn.Module):
    """(B, C, X, Y) -> (B, C, X, Y): ``x + [DCNv2 3x3 -> BN -> ReLU] x num_layers`` (the last without ReLU)."""

    def __init__(self, *, in_channels: int, bev_size: Sequence[int] | None = None, num_layers: int = 2):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ModulatedDeformConvBEV needs num_layers >= 1, got {num_layers}")
        self.in_channels = self.out_channels = in_channels
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [_ModulatedDeformConv(in_channels, in_channels), nn.BatchNorm2d(in_channels)]
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)
