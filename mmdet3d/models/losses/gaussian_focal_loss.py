"""Gaussian focal loss (CornerNet/CenterNet penalty-reduced focal loss on Gaussian heatmaps)."""
from __future__ import annotations

import torch
from torch import nn

from ..builder import LOSSES
from .utils import reduce_loss

__all__ = ["GaussianFocalLoss", "gaussian_focal_loss"]


def gaussian_focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0,
                        eps: float = 1e-12) -> torch.Tensor:
    """Element-wise loss; ``pred`` are probabilities, ``target`` a Gaussian heatmap in [0, 1].

    Cells with target 1 (object centres) cost ``-log(p) (1 - p)^alpha``; other cells cost
    ``-log(1 - p) p^alpha (1 - target)^gamma``, reduced near centres.
    """
    positive = target.eq(1).to(pred.dtype)
    negative_weight = (1 - target).pow(gamma)
    positive_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * positive
    negative_loss = -(1 - pred + eps).log() * pred.pow(alpha) * negative_weight
    return positive_loss + negative_loss


@LOSSES.register_module()
class GaussianFocalLoss(nn.Module):
    """``loss_weight * reduce(gaussian_focal_loss(pred, target))``; ``avg_factor`` divides the sum."""

    def __init__(self, alpha: float = 2.0, gamma: float = 4.0, reduction: str = "mean", loss_weight: float = 1.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor, avg_factor: float | None = None) -> torch.Tensor:
        loss = gaussian_focal_loss(pred, target, self.alpha, self.gamma)
        return self.loss_weight * reduce_loss(loss, self.reduction, avg_factor)
