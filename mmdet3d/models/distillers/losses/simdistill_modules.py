"""Registered SimDistill losses: feature MSE, the heatmap-masked cross-modal MSE, prediction KD.

Release weights (DESIGN.md 5.5): fusion ``fused_bev`` x1, intra-modal ``camera_bev`` x1,
cross-modal ``lidar_bev`` (the simulated LiDAR BEV against the teacher's LiDAR BEV) x100,
prediction KD x0.25 each (``QualityFocalKDLoss``, ``BoxCodeKDLoss``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from mmdet3d.core.bbox.center_point_coder import CODE_SIZES

from ...builder import DISTILL_LOSSES
from .base import DistillLoss
from .simdistill import box_code_kd_loss, gt_heatmap_mask, gt_targets, masked_mse, quality_focal_kd_loss

__all__ = ["FeatureMSELoss", "HeatmapMaskedMSELoss", "QualityFocalKDLoss", "BoxCodeKDLoss", "HeadOutputLoss"]


def _same_grid(loss: DistillLoss, fs: torch.Tensor, ft: torch.Tensor) -> None:
    if fs.shape != ft.shape:
        raise ValueError(f"{type(loss).__name__} {loss.name!r}: student {loss.student} {tuple(fs.shape)} and teacher "
                         f"{loss.teacher} {tuple(ft.shape)} differ; the student must have the teacher's widths and grid")


@DISTILL_LOSSES.register_module()
class FeatureMSELoss(DistillLoss):
    """``MSE(student map, teacher map)`` with mean reduction (SimDistill's fusion and intra-modal terms)."""

    needs_channels = True
    default_student = default_teacher = "fused_bev"
    default_name = "feature_mse"

    def __init__(self, *, student_channels: int, teacher_channels: int, **kwargs):
        super().__init__(**kwargs)
        if student_channels != teacher_channels:
            raise ValueError(f"{type(self).__name__} {self.name!r}: student {self.student} has {student_channels} channels, "
                             f"teacher {self.teacher} {teacher_channels}; give the student the teacher's width")

    def maps(self, student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        fs, ft = self.pick(student, self.student, "student"), self.pick(teacher, self.teacher, "teacher")
        _same_grid(self, fs, ft)
        return fs, ft.detach()

    def forward(self, student, teacher, batch, context):
        return self.weight * masked_mse(*self.maps(student, teacher))


@DISTILL_LOSSES.register_module()
class HeatmapMaskedMSELoss(FeatureMSELoss):
    """``MSE(S * H, Ft * H)``: H the sum over classes of the CenterPoint Gaussian GT heatmaps drawn
    on the compared maps' grid by the student's head (SimDistill's cross-modal term, weight 100)."""

    default_student = default_teacher = "lidar_bev"
    default_name = "cross_modal"

    def heatmap(self, grid, batch, context) -> torch.Tensor:
        targets = gt_targets(context["object_head"], batch["gt_bboxes_3d"], batch["gt_labels_3d"], grid, context.get("cache"))
        return gt_heatmap_mask(targets)

    def visual_masks(self, student, teacher, batch, context) -> dict[str, torch.Tensor]:
        """H on the compared maps' grid, (B, X, Y) clipped to [0, 1] for display."""
        fs = self.pick(student, self.student, "student")
        return {f"cross-modal mask H ({self.student})": self.heatmap(tuple(fs.shape[-2:]), batch, context).clamp(max=1.0)}

    def forward(self, student, teacher, batch, context):
        fs, ft = self.maps(student, teacher)
        return self.weight * masked_mse(fs, ft, self.heatmap(tuple(fs.shape[-2:]), batch, context).to(fs.device))


class HeadOutputLoss(DistillLoss):
    """A loss between the per-task head outputs of student and teacher (same tasks and grid)."""

    needs_teacher_heads = True

    def tasks(self, student, teacher) -> list[tuple]:
        s, t = self.pick(student, self.student, "student"), self.pick(teacher, self.teacher, "teacher")
        if len(s) != len(t):
            raise ValueError(f"{type(self).__name__} {self.name!r}: the student has {len(s)} tasks, the teacher {len(t)}")
        return list(zip(s, t))


@DISTILL_LOSSES.register_module()
class QualityFocalKDLoss(HeadOutputLoss):
    """Quality focal loss (``beta``) of the student heatmap logits against the teacher's sigmoid
    probabilities, summed over tasks (SimDistill's prediction KD, weight 0.25)."""

    default_student = default_teacher = "heatmaps"
    default_name = "pred_heatmap"

    def __init__(self, *, beta: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)

    def forward(self, student, teacher, batch, context):
        total = 0.0
        for s, t in self.tasks(student, teacher):
            _same_grid(self, s, t)
            total = total + quality_focal_kd_loss(s.float(), t.detach().float().sigmoid(), self.beta)
        return self.weight * total


@DISTILL_LOSSES.register_module()
class BoxCodeKDLoss(HeadOutputLoss):
    """Code-weighted smooth-L1 (``beta``) between student and teacher box codes at the GT centre
    cells of each task, averaged over its centres and summed over tasks (weight 0.25 in SimDistill).
    ``code_names``: the regression groups compared (default all of the head's, e.g. ``[reg, rot]``)."""

    default_student = default_teacher = "box_codes"
    default_name = "pred_box"

    def __init__(self, *, beta: float = 1.0 / 9.0, code_names: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)
        self.code_names = list(code_names) if code_names is not None else None

    def forward(self, student, teacher, batch, context):
        head = context["object_head"]
        names = self.code_names or head.coder.code_names
        unknown = [n for n in names if n not in head.coder.code_names]
        if unknown:
            raise ValueError(f"BoxCodeKDLoss {self.name!r}: code_names {unknown} are not in the head's {head.coder.code_names}")
        groups = dict(zip(head.coder.code_names, head.code_weights.split([CODE_SIZES[n] for n in head.coder.code_names])))
        weights = torch.cat([groups[n] for n in names])  # the head's code weights of the compared groups
        tasks = self.tasks(student, teacher)
        grid = tuple(tasks[0][0][names[0]].shape[-2:])
        targets = gt_targets(head, batch["gt_bboxes_3d"], batch["gt_labels_3d"], grid, context.get("cache"))
        total = 0.0
        for t, (s_codes, t_codes) in enumerate(tasks):
            s = torch.cat([s_codes[n] for n in names], dim=1).float()
            tc = torch.cat([t_codes[n] for n in names], dim=1).detach().float()
            _same_grid(self, s, tc)
            cells = torch.cat([sample[t][1] for sample in targets]).to(s.device)
            batch_index = torch.cat([torch.full((len(sample[t][1]),), b, dtype=torch.long) for b, sample in enumerate(targets)])
            total = total + box_code_kd_loss(s, tc, batch_index.to(s.device), cells, weights.to(s.device), self.beta)
        return self.weight * total
