"""Registered LGKD losses: LiDAR-guided masked feature distillation, depth distillation with a
temperature on the logits, and per-class sigmoid response distillation (DESIGN.md 5.6).

The box-code part of the response distillation (smooth-L1 on ``reg`` and ``rot``) is
``BoxCodeKDLoss`` with ``code_names: [reg, rot]``.
"""
from __future__ import annotations

import torch
from torch import nn

from ...builder import DISTILL_LOSSES
from .base import DistillLoss
from .lgkd import (box_footprint_mask, camera_view_loss, depth_kd_loss, lidar_occupancy_mask, reduce_bev_mask,
                   sigmoid_kd_loss)
from .simdistill_modules import HeadOutputLoss

__all__ = ["LiDARGuidedFeatureLoss", "DepthKDLoss", "SigmoidHeatmapKDLoss"]

FOREGROUND = ("lidar", "boxes")


@DISTILL_LOSSES.register_module()
class LiDARGuidedFeatureLoss(DistillLoss):
    """``sum_v MSE(adapter(Fs), Ft)`` over the cells of ``M_fg * M_v * [Ft != 0]``, weight 1.

    ``foreground``: ``lidar`` (cells holding a keyframe LiDAR point, ``M_lidar``) or ``boxes``
    (cells inside a GT box). ``M_v``: the BEV footprint of camera ``v``'s frustum, for every camera
    of the batch, from the student's lift (reduced to the compared grid). The 1x1 adapter maps the
    student's width to the teacher's when they differ (a larger teacher); otherwise there is none.
    """

    needs_channels = True
    default_student = default_teacher = "fused_bev"
    default_name = "lidar_guided"

    def __init__(self, *, student_channels: int, teacher_channels: int, foreground: str = "lidar",
                 keyframe_only: bool = True, **kwargs):
        super().__init__(**kwargs)
        if foreground not in FOREGROUND:
            raise ValueError(f"LiDARGuidedFeatureLoss: foreground must be one of {list(FOREGROUND)}, got {foreground!r}")
        self.foreground, self.keyframe_only = foreground, bool(keyframe_only)
        self.adapter = (nn.Conv2d(student_channels, teacher_channels, 1) if student_channels != teacher_channels
                        else nn.Identity())

    def view_masks(self, teacher, batch, context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> foreground (B, X, Y), camera footprints (B, N, X, Y) and the distilled cells per camera
        (B, N, X, Y), on the teacher map's grid."""
        ft = self.pick(teacher, self.teacher, "teacher")
        grid = tuple(ft.shape[-2:])
        if self.foreground == "lidar":
            fg = lidar_occupancy_mask(self.need(batch, "points", self.name), context["bev_range"], grid, self.keyframe_only)
        else:
            fg = box_footprint_mask(batch["gt_bboxes_3d"], context["bev_range"], grid)
        fg = fg.to(ft.device)
        views = reduce_bev_mask(context["frustum_bev_masks"](batch), grid).to(ft.device)
        return fg, views, fg[:, None] & views & (ft.detach().abs().sum(dim=1) > 0)[:, None]

    def visual_masks(self, student, teacher, batch, context) -> dict[str, torch.Tensor]:
        """The foreground, the share of the cameras whose footprint covers a cell, and the distilled
        cells (some camera's), each (B, X, Y) in [0, 1]."""
        fg, views, distilled = self.view_masks(teacher, batch, context)
        return {f"LGKD foreground ({self.foreground})": fg.float(),
                f"camera footprints (share of {views.shape[1]} cameras)": views.float().mean(dim=1),
                f"LGKD distilled cells ({self.teacher})": distilled.any(dim=1).float()}

    def forward(self, student, teacher, batch, context):
        fs, ft = self.pick(student, self.student, "student"), self.pick(teacher, self.teacher, "teacher")
        if fs.shape[-2:] != ft.shape[-2:]:
            raise ValueError(f"LiDARGuidedFeatureLoss {self.name!r}: student grid {tuple(fs.shape[-2:])} differs from the "
                             f"teacher's {tuple(ft.shape[-2:])}")
        _, _, distilled = self.view_masks(teacher, batch, context)
        return self.weight * camera_view_loss(self.adapter(fs), ft.detach(), distilled)


@DISTILL_LOSSES.register_module()
class DepthKDLoss(DistillLoss):
    """``T^2 KL(softmax(t / T) || softmax(s / T))`` of the depth logits on LiDAR-hit pixels
    (``batch["depth_map"] > 0``), ``temperature`` 1.25 in LGKD."""

    default_student = default_teacher = "depth_logits"
    default_name = "depth_kd"

    def __init__(self, *, temperature: float = 1.25, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"DepthKDLoss: temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student, teacher, batch, context):
        s, t = self.pick(student, self.student, "student"), self.pick(teacher, self.teacher, "teacher")
        depth_map = self.need(batch, "depth_map", self.name)
        if s.shape != t.shape or depth_map.shape[-2:] != s.shape[-2:]:
            raise ValueError(f"DepthKDLoss {self.name!r}: student {tuple(s.shape)}, teacher {tuple(t.shape)} and depth_map "
                             f"{tuple(depth_map.shape)} must share bins and cells (same dbound and feature stride)")
        return self.weight * depth_kd_loss(s, t.detach(), depth_map > 0, self.temperature)


@DISTILL_LOSSES.register_module()
class SigmoidHeatmapKDLoss(HeadOutputLoss):
    """Per-class sigmoid KD of the heatmap logits (binary KL), summed over tasks; weight 0.25."""

    default_student = default_teacher = "heatmaps"
    default_name = "response_heatmap"

    def forward(self, student, teacher, batch, context):
        total = 0.0
        for s, t in self.tasks(student, teacher):
            if s.shape != t.shape:
                raise ValueError(f"SigmoidHeatmapKDLoss {self.name!r}: heatmaps {tuple(s.shape)} and {tuple(t.shape)} differ")
            total = total + sigmoid_kd_loss(s.float(), t.detach().float())
        return self.weight * total
