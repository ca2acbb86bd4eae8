"""SimDistill losses (DESIGN.md 5.5): feature MSE (fusion, intra-modal), the Gaussian-heatmap mask
of the cross-modal term, and prediction distillation (quality focal loss on heatmaps, smooth-L1 on
box codes at the GT centre cells).

Unweighted functions; the registered modules (``simdistill_modules.py``) apply the config weight.
B batch, C channels, X x Y cells, T tasks, M centres.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["gt_targets", "gt_heatmap_mask", "masked_mse", "quality_focal_kd_loss", "box_code_kd_loss"]


def gt_targets(head, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], grid: Sequence[int], cache: dict | None = None):
    """The head's CenterPoint targets of every sample on ``grid`` (X, Y): per sample, per task
    ``(heatmap (n_cls, X, Y), cells (M_t, 2), codes (M_t, code))``; kept in ``cache`` for the step."""
    key = ("gt_targets", tuple(grid))
    if cache is not None and key in cache:
        return cache[key]
    targets = [head.get_targets_single(b, l, tuple(grid)) for b, l in zip(boxes, labels)]
    if cache is not None:
        cache[key] = targets
    return targets


def gt_heatmap_mask(targets) -> torch.Tensor:
    """``gt_targets`` -> H (B, X, Y): the Gaussian GT heatmaps summed over every class of every task."""
    return torch.stack([sum(heatmap.sum(dim=0) for heatmap, _, _ in sample) for sample in targets])


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean((s * H - t * H)^2)`` over (B, C, X, Y) for a mask H (B, X, Y); plain MSE without one."""
    if mask is None:
        return F.mse_loss(student, teacher)
    mask = mask.to(student.dtype).unsqueeze(1)
    return F.mse_loss(student * mask, teacher * mask)


def quality_focal_kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Quality focal loss of student logits (B, n_cls, X, Y) against soft targets in [0, 1]:
    ``BCE(sigmoid(s), p_t) * |sigmoid(s) - p_t|^beta``, summed over classes, averaged over cells.
    The targets are the teacher's probabilities, one sigmoid of its logits (the release takes two)."""
    bce = F.binary_cross_entropy_with_logits(student_logits, teacher_probs, reduction="none")
    focal = (student_logits.sigmoid() - teacher_probs).abs().pow(beta)
    return (bce * focal).sum(dim=1).mean()


def box_code_kd_loss(student_codes: torch.Tensor, teacher_codes: torch.Tensor, batch_index: torch.Tensor,
                     cells: torch.Tensor, code_weights: torch.Tensor, beta: float = 1.0 / 9.0) -> torch.Tensor:
    """Smooth-L1 between box-code maps (B, code, X, Y) at the GT centre cells only.

    ``batch_index`` (M,) and ``cells`` (M, 2) ``(x, y)`` list the real centres (no padding slots);
    the code-weighted smooth-L1 is summed over the code and averaged over the M centres (0 for M = 0).
    """
    if len(cells) == 0:
        return student_codes.sum() * 0.0
    s = student_codes[batch_index, :, cells[:, 0], cells[:, 1]]  # (B, code, X, Y) at centres -> (M, code)
    t = teacher_codes[batch_index, :, cells[:, 0], cells[:, 1]]
    loss = F.smooth_l1_loss(s, t, reduction="none", beta=beta) * code_weights.to(s.dtype)
    return loss.sum() / len(cells)
