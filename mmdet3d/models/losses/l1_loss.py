"""L1 regression loss with per-element weights (box code weights times object masks)."""
from __future__ import annotations

import torch
from torch import nn

from ..builder import LOSSES
from .utils import reduce_loss

__all__ = ["L1Loss"]


@LOSSES.register_module()
class L1Loss(nn.Module):
    """``loss_weight * reduce(|pred - target| * weight)``; ``avg_factor`` divides the sum."""

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                avg_factor: float | None = None) -> torch.Tensor:
        loss = (pred - target).abs()
        if weight is not None:
            loss = loss * weight
        return self.loss_weight * reduce_loss(loss, self.reduction, avg_factor)
