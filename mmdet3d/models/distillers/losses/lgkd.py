"""LiDAR-guided distillation (BEV-LGKD, DESIGN.md 5.6): masks and losses.

Every mask lives in the augmented BEV frame of the batch (the frame of the features): the points
and GT boxes of a training batch are already augmented by the pipeline, and the camera footprints
are computed from ``lidar_aug_matrix`` (the release builds its masks without the augmentation).
B batch, N cameras, D depth bins, C channels, X x Y cells.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from mmdet3d.core.bbox.structures import points_in_boxes
from mmdet3d.core.points import bev_occupancy

__all__ = ["bev_cell_centres", "lidar_occupancy_mask", "box_footprint_mask", "reduce_bev_mask", "camera_view_loss",
           "depth_kd_loss", "sigmoid_kd_loss"]

def bev_cell_centres(bev_range: Sequence[float], grid: Sequence[int], device=None) -> torch.Tensor:
    """(X*Y, 2) metric centres ``min + (i + 0.5) * cell`` of the cells, x-major."""
    x_min, y_min, x_max, y_max = (float(v) for v in bev_range)
    xs = x_min + (torch.arange(grid[0], device=device, dtype=torch.float64) + 0.5) * (x_max - x_min) / grid[0]
    ys = y_min + (torch.arange(grid[1], device=device, dtype=torch.float64) + 0.5) * (y_max - y_min) / grid[1]
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


def lidar_occupancy_mask(points: Sequence[torch.Tensor], bev_range: Sequence[float], grid: Sequence[int],
                         keyframe_only: bool = True) -> torch.Tensor:
    """B point clouds (P_b, >=3) -> (B, X, Y) bool: the cells holding at least one point.

    ``keyframe_only``: only points with ``time_lag`` (column 4) equal to 0, when the column exists.
    """
    masks = []
    for cloud in points:
        if keyframe_only and cloud.shape[1] > 4:
            cloud = cloud[cloud[:, 4] == 0]
        masks.append(bev_occupancy(cloud, bev_range, grid) > 0)
    return torch.stack(masks)


def box_footprint_mask(boxes: Sequence[torch.Tensor], bev_range: Sequence[float], grid: Sequence[int]) -> torch.Tensor:
    """B box sets (K_b, >=7) -> (B, X, Y) bool: the cells whose centre lies in some box's footprint."""
    centres = bev_cell_centres(bev_range, grid)
    flat = torch.cat([centres, centres.new_zeros(len(centres), 1)], dim=1)  # (X*Y, 3) at z = 0
    masks = []
    for sample in boxes:
        footprint = sample[:, :7].double().clone()
        footprint[:, 2], footprint[:, 5] = 0.0, 1.0  # every height: only the footprint counts
        inside = points_in_boxes(flat, footprint).any(dim=1) if len(sample) else torch.zeros(len(flat), dtype=torch.bool)
        masks.append(inside.view(grid[0], grid[1]))
    return torch.stack(masks).to(boxes[0].device if len(boxes) else "cpu")


def reduce_bev_mask(mask: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(..., X0, Y0) bool -> (..., X, Y): a cell is set when any of the X0/X x Y0/Y cells it covers is."""
    size_x, size_y = mask.shape[-2:]
    if (size_x, size_y) == tuple(grid):
        return mask
    if size_x % grid[0] or size_y % grid[1]:
        raise ValueError(f"a BEV mask of {size_x} x {size_y} cells does not reduce to {grid[0]} x {grid[1]}")
    lead = mask.shape[:-2]
    pooled = F.max_pool2d(mask.reshape(-1, 1, size_x, size_y).float(), (size_x // grid[0], size_y // grid[1]))
    return pooled.reshape(*lead, grid[0], grid[1]) > 0


def camera_view_loss(student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``sum_v MSE(student, teacher)`` over the cells of each camera's mask.

    student / teacher (B, C, X, Y), masks (B, N, X, Y) bool -> per camera ``v`` the mean of
    ``(s - t)^2`` over the masked cells (of the whole batch) and channels, summed over cameras;
    a camera with no masked cell adds 0.
    """
    error = (student - teacher).pow(2).sum(dim=1)  # (B, X, Y)
    weights = masks.to(error.dtype)
    per_camera = (weights * error[:, None]).sum(dim=(0, 2, 3))  # (N,)
    cells = weights.sum(dim=(0, 2, 3))
    return (per_camera / (cells * student.shape[1]).clamp(min=1)).sum()


def depth_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hit: torch.Tensor,
                  temperature: float = 1.25) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` over the D bins, averaged over the hit pixels.

    logits (B, N, D, h, w); hit (B, N, h, w) bool (pixels with a LiDAR point). The temperature
    divides the logits (the release divides probabilities). 0 without a hit pixel.
    """
    if not hit.any():
        return student_logits.sum() * 0.0
    s = student_logits.permute(0, 1, 3, 4, 2)[hit] / temperature  # (B, N, D, h, w) -> (V, D)
    t = teacher_logits.permute(0, 1, 3, 4, 2)[hit] / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="none", log_target=True).sum(dim=-1)
    return temperature**2 * kl.mean()


def sigmoid_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-class binary KL of the sigmoid probabilities, (B, n_cls, X, Y) -> summed over classes,
    averaged over cells: ``BCE(s, p_t) - BCE(t, p_t)`` (0 when the logits agree; a one-class task
    contributes like any other, where a softmax over classes would give exactly 0)."""
    target = teacher_logits.sigmoid()
    kl = (F.binary_cross_entropy_with_logits(student_logits, target, reduction="none")
          - F.binary_cross_entropy_with_logits(teacher_logits, target, reduction="none"))
    return kl.sum(dim=1).mean()
