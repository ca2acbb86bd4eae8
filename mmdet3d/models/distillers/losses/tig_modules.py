"""Registered TiG losses: inner-depth supervision, inter-keypoint and inter-channel relations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...builder import DISTILL_LOSSES
from .base import DistillLoss
from .tig import box_keypoint_matrix, box_lattice_points, inner_depth_loss, inter_channel_loss, inter_keypoint_loss, sample_box_keypoints

__all__ = ["InnerDepthLoss", "InterKeypointLoss", "InterChannelLoss"]


@DISTILL_LOSSES.register_module()
class InnerDepthLoss(DistillLoss):
    """TiG inner-depth supervision of the student's depth logits (needs no teacher tensor)."""

    default_student, default_name = "depth_logits", "inner_depth"

    def forward(self, student, teacher, batch, context):
        logits = self.pick(student, self.student, "student")
        depth_map = self.need(batch, "depth_map", self.name)
        fg_map = self.need(batch, "fg_map", self.name)
        if depth_map.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"InnerDepthLoss: depth_map cells {tuple(depth_map.shape[-2:])} differ from the depth logits' "
                             f"{tuple(logits.shape[-2:])}; set DepthTargets.downsample to the feature stride")
        bins = context["depth_bins"].to(logits.device)
        return self.weight * inner_depth_loss(logits, depth_map, fg_map, bins)


class _BoxKeypointLoss(DistillLoss):
    """Sample student and teacher BEV maps at every GT box's enlarged lattice (TiG 5.4)."""

    default_student = default_teacher = "decoder_out"

    def __init__(self, *, lattice: int = 24, enlarge: float = 1.6, **kwargs):
        super().__init__(**kwargs)
        if lattice < 2:
            raise ValueError(f"{type(self).__name__}: lattice must be >= 2 (the lattice includes the edges), got {lattice}")
        self.lattice, self.enlarge = int(lattice), float(enlarge)

    def visual_masks(self, student, teacher, batch, context):
        """The lattice positions (every box's S x S points) per sample, metres."""
        caption = f"keypoint lattices {self.lattice}x{self.lattice}, boxes +{self.enlarge:g} m"
        return {caption: [box_lattice_points(boxes.double(), self.lattice, self.enlarge).reshape(-1, 2)
                          for boxes in batch["gt_bboxes_3d"]]}

    def keypoints(self, student, teacher, batch, context) -> tuple[torch.Tensor, torch.Tensor]:
        fs, ft = self.pick(student, self.student, "student"), self.pick(teacher, self.teacher, "teacher")
        if fs.shape[-2:] != ft.shape[-2:]:
            raise ValueError(f"{type(self).__name__}: student {self.student} grid {tuple(fs.shape[-2:])} differs from the "
                             f"teacher {self.teacher} grid {tuple(ft.shape[-2:])}")
        # Inter-keypoint and inter-channel terms sample the same lattice: once per step.
        key = ("box_keypoints", self.student, self.teacher, self.lattice, self.enlarge)
        cache = context.get("cache")
        if cache is not None and key in cache:
            return cache[key]
        boxes = batch["gt_bboxes_3d"]
        matrix = None
        if sum(len(b) for b in boxes) and fs.dtype == ft.dtype:  # one bilinear matrix for both maps
            matrix = box_keypoint_matrix(boxes, (fs.shape[0], *fs.shape[-2:]), context["bev_range"], self.lattice,
                                         self.enlarge, fs.dtype, fs.device)
        ps = sample_box_keypoints(fs, boxes, context["bev_range"], self.lattice, self.enlarge, matrix)
        pt = sample_box_keypoints(ft.detach(), boxes, context["bev_range"], self.lattice, self.enlarge, matrix)
        if cache is not None:
            cache[key] = (ps, pt)
        return ps, pt


@DISTILL_LOSSES.register_module()
class InterKeypointLoss(_BoxKeypointLoss):
    """Relations between the keypoints of each box (``P^T P``), weight 100 in TiG."""

    default_name = "inter_keypoint"

    def forward(self, student, teacher, batch, context):
        ps, pt = self.keypoints(student, teacher, batch, context)
        return self.weight * inter_keypoint_loss(ps, pt)


@DISTILL_LOSSES.register_module()
class InterChannelLoss(_BoxKeypointLoss):
    """Relations between the channels of each box (``P P^T``) after a 1x1 adapter ``Cs -> Ct``."""

    needs_channels = True
    default_name = "inter_channel"

    def __init__(self, *, student_channels: int, teacher_channels: int, **kwargs):
        super().__init__(**kwargs)
        self.adapter = nn.Conv1d(student_channels, teacher_channels, 1, bias=True)

    def forward(self, student, teacher, batch, context):
        ps, pt = self.keypoints(student, teacher, batch, context)
        # the 1x1 adapter as one matrix product on the sampler's (K, M, C) layout (Conv1d's CPU
        # kernel is slower for it; the parameters stay the Conv1d's, as in checkpoints)
        adapted = F.linear(ps.transpose(1, 2), self.adapter.weight[:, :, 0], self.adapter.bias).transpose(1, 2)
        return self.weight * inter_channel_loss(adapted, pt)
