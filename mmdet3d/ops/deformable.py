"""Deformable sampling on BEV maps in plain PyTorch: deformable attention and modulated
deformable convolution (DCNv2), both through one ``grid_sample`` call, with naive references.

Coordinates are continuous cell indices of a map laid out ``(C, X, Y)`` (or ``(C, H, W)``): the
centre of cell ``(i, j)`` is ``(i, j)`` exactly, and a point off the map samples zeros (bilinear
weights of the corners that exist; the others contribute 0). ``grid_sample`` with
``align_corners=False`` puts cell ``i`` of ``n`` at the normalised coordinate ``(2 i + 1) / n - 1``.

- ``deformable_attention_sampling``: per head, a weighted sum of bilinear samples of the value
  map at each query's sampling locations (Deformable DETR's core, one level).
- ``modulated_deform_conv2d``: a 3x3 (any ``k x k``) convolution whose taps sit at
  ``p + p_k + offset_k(p)`` and are scaled by ``mask_k(p)``; offsets ``(dy, dx)`` per tap as
  mmcv's ``ModulatedDeformConv2d`` orders them (channel ``2k`` rows, ``2k + 1`` columns).

``*_reference`` materialise the four bilinear corners per sample with explicit indexing; they
are the slow obvious versions the tests compare against (values and gradients).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bilinear_sample_reference", "deformable_attention_sampling", "deformable_attention_sampling_reference",
           "modulated_deform_conv2d", "modulated_deform_conv2d_reference", "to_grid"]


def to_grid(rows: torch.Tensor, cols: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Cell coordinates (any shape) -> ``grid_sample`` grid (..., 2) = (normalised col, normalised row)."""
    return torch.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], dim=-1)


def bilinear_sample_reference(value: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """value (C, H, W), rows / cols (S,) cell coordinates -> (C, S); zeros off the map."""
    channels, height, width = value.shape
    r0, c0 = rows.floor(), cols.floor()
    out = value.new_zeros(channels, rows.numel())
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        r, c = r0 + dr, c0 + dc
        weight = (1 - (rows - r).abs()) * (1 - (cols - c).abs())
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        ri, ci = r.long().clamp(0, height - 1), c.long().clamp(0, width - 1)
        out = out + value[:, ri, ci] * (weight * inside)
    return out


def deformable_attention_sampling(value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Deformable attention on one map.

    value (B, M, D, X, Y): M heads of D channels; locations (B, Q, M, P, 2) cell coordinates
    ``(x, y)`` of P sampling points per query and head; weights (B, Q, M, P) attention weights.
    Returns (B, Q, M * D): per head ``sum_p weights[p] * value(location_p)``.
    """
    batch_size, num_heads, channels, size_x, size_y = value.shape
    num_queries, num_points = locations.shape[1], locations.shape[3]
    # (B, Q, M, P, 2) -> (B*M, Q, P, 2): one grid per head
    grid = to_grid(locations[..., 0], locations[..., 1], size_x, size_y).transpose(1, 2).flatten(0, 1)
    sampled = F.grid_sample(value.flatten(0, 1), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B*M, D, Q, P)
    w = weights.transpose(1, 2).reshape(batch_size * num_heads, 1, num_queries, num_points)
    out = (sampled * w).sum(dim=-1)  # (B*M, D, Q)
    # (B*M, D, Q) -> (B, M, D, Q) -> (B, Q, M*D)
    return out.view(batch_size, num_heads, channels, num_queries).permute(0, 3, 1, 2).reshape(batch_size, num_queries, -1)


def deformable_attention_sampling_reference(value: torch.Tensor, locations: torch.Tensor,
                                            weights: torch.Tensor) -> torch.Tensor:
    """The same sum with explicit corners, one (sample, head) at a time."""
    batch_size, num_heads, channels = value.shape[:3]
    num_queries = locations.shape[1]
    out = value.new_zeros(batch_size, num_queries, num_heads, channels)
    for b in range(batch_size):
        for m in range(num_heads):
            loc = locations[b, :, m]  # (Q, P, 2)
            samples = bilinear_sample_reference(value[b, m], loc[..., 0].reshape(-1), loc[..., 1].reshape(-1))
            samples = samples.view(channels, *loc.shape[:2])  # (D, Q, P)
            out[b, :, m] = (samples * weights[b, :, m]).sum(dim=-1).t()
    return out.reshape(batch_size, num_queries, num_heads * channels)


def _tap_positions(offset: torch.Tensor, kernel_size: int, padding: int, dilation: int):
    """offset (B, 2K, H, W) -> rows, cols (B, K, H, W): where each tap of each output cell samples."""
    batch_size, _, height, width = offset.shape
    taps = torch.arange(kernel_size, dtype=offset.dtype, device=offset.device) * dilation - padding
    tap_r, tap_c = torch.meshgrid(taps, taps, indexing="ij")  # (k, k), row-major tap order
    base_r = torch.arange(height, dtype=offset.dtype, device=offset.device).view(1, 1, height, 1)
    base_c = torch.arange(width, dtype=offset.dtype, device=offset.device).view(1, 1, 1, width)
    offset = offset.view(batch_size, kernel_size * kernel_size, 2, height, width)
    rows = base_r + tap_r.reshape(1, -1, 1, 1) + offset[:, :, 0]
    cols = base_c + tap_c.reshape(1, -1, 1, 1) + offset[:, :, 1]
    return rows, cols


def _check_deform_conv(x, offset, mask, weight):
    kernel_size = weight.shape[-1]
    taps = kernel_size * kernel_size
    if weight.shape[-2] != kernel_size or weight.shape[1] != x.shape[1]:
        raise ValueError(f"deform conv weight {tuple(weight.shape)} must be (C_out, {x.shape[1]}, k, k)")
    if offset.shape[1] != 2 * taps or mask.shape[1] != taps or offset.shape[-2:] != x.shape[-2:] or mask.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"deform conv: offset {tuple(offset.shape)} / mask {tuple(mask.shape)} must be "
                         f"(B, {2 * taps}, H, W) / (B, {taps}, H, W) for input {tuple(x.shape)} (stride 1, same size)")
    return kernel_size, taps


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, dilation: int = 1) -> torch.Tensor:
    """x (B, C, H, W), offset (B, 2K, H, W), mask (B, K, H, W), weight (C_out, C, k, k), K = k*k.

    Stride 1 and "same" padding ``dilation * (k - 1) / 2``: -> (B, C_out, H, W) with
    ``out[p] = bias + sum_k weight_k . x(p + p_k + offset_k(p)) * mask_k(p)``. With zero offsets
    and unit masks it is ``F.conv2d(x, weight, bias, padding=dilation * (k // 2), dilation=dilation)``.
    """
    kernel_size, taps = _check_deform_conv(x, offset, mask, weight)
    batch_size, channels, height, width = x.shape
    rows, cols = _tap_positions(offset.to(x.dtype), kernel_size, dilation * (kernel_size // 2), dilation)
    grid = to_grid(rows, cols, height, width).view(batch_size, taps * height, width, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, K*H, W)
    # (B, C, K*H, W) -> (B, C, K, H*W), modulated, -> (B, C*K, H*W): the im2col columns
    columns = sampled.view(batch_size, channels, taps, height * width) * mask.reshape(batch_size, 1, taps, height * width)
    out = weight.reshape(weight.shape[0], channels * taps) @ columns.reshape(batch_size, channels * taps, height * width)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(batch_size, -1, height, width)


def modulated_deform_conv2d_reference(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                                      bias: torch.Tensor | None = None, dilation: int = 1) -> torch.Tensor:
    """The same convolution tap by tap with explicit bilinear corners."""
    kernel_size, taps = _check_deform_conv(x, offset, mask, weight)
    batch_size, channels, height, width = x.shape
    rows, cols = _tap_positions(offset.to(x.dtype), kernel_size, dilation * (kernel_size // 2), dilation)
    out = x.new_zeros(batch_size, weight.shape[0], height * width)
    flat_weight = weight.reshape(weight.shape[0], channels, taps)
    for b in range(batch_size):
        for k in range(taps):
            samples = bilinear_sample_reference(x[b], rows[b, k].reshape(-1), cols[b, k].reshape(-1))  # (C, H*W)
            out[b] = out[b] + flat_weight[:, :, k] @ (samples * mask[b, k].reshape(1, -1))
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(batch_size, -1, height, width)
