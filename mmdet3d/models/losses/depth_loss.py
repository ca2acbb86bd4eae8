"""Absolute dense depth supervision of a lift-splat depth branch (BEVDepth-style)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..builder import LOSSES

__all__ = ["depth_bin_targets", "dense_depth_loss", "DenseDepthLoss"]


def depth_bin_targets(depth_map: torch.Tensor, dbound: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., h, w) metres (0 = no point) -> bin index (..., h, w) int64 and validity mask.

    Bin ``b`` covers ``[min + b * step, min + (b + 1) * step)``, the interval around the view
    transform's depth value ``min + (b + 0.5) * step``; depths outside ``[min, max)`` are invalid.
    """
    lo, hi, step = (float(v) for v in dbound)
    num_bins = int(round((hi - lo) / step))
    index = torch.floor((depth_map - lo) / step).long()
    valid = (depth_map > 0) & (index >= 0) & (index < num_bins)
    return index.clamp(0, num_bins - 1), valid


def dense_depth_loss(depth_logits: torch.Tensor, depth_map: torch.Tensor, dbound: Sequence[float]) -> torch.Tensor:
    """Binary cross-entropy of ``sigmoid(depth_logits)`` (B, N, D, h, w) against one-hot bins on the
    cells that hold a LiDAR point, summed over bins and averaged over those cells (0 without any)."""
    index, valid = depth_bin_targets(depth_map, dbound)
    if not valid.any():
        return depth_logits.sum() * 0.0
    logits = depth_logits.permute(0, 1, 3, 4, 2)[valid]  # (B, N, D, h, w) -> (V, D)
    target = F.one_hot(index[valid], logits.shape[-1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / valid.sum()


@LOSSES.register_module()
class DenseDepthLoss(nn.Module):
    """``dense_depth_loss`` times ``loss_weight``; ``dbound`` is the view transform's."""

    def __init__(self, dbound: Sequence[float], loss_weight: float = 3.0):
        super().__init__()
        self.dbound = [float(v) for v in dbound]
        self.loss_weight = float(loss_weight)

    def forward(self, depth_logits: torch.Tensor, depth_map: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * dense_depth_loss(depth_logits, depth_map, self.dbound)
