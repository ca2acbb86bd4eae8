"""Loss reduction shared by the loss modules."""
from __future__ import annotations

import torch

__all__ = ["reduce_loss"]


def reduce_loss(loss: torch.Tensor, reduction: str = "mean", avg_factor: float | None = None) -> torch.Tensor:
    """``none`` | ``sum`` | ``mean``; with ``avg_factor``, ``mean`` is ``sum / avg_factor``."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if avg_factor is None else loss.sum() / avg_factor
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
