"""BEVDistiller: a frozen teacher and a camera-only student sharing the BEV grid (DESIGN.md 5.2).

Both are ordinary fusion-model configs. The teacher is loaded from ``teacher_checkpoint`` (a run
dir's ``latest.pth`` works) before training starts, frozen (no gradients, BatchNorm and dropout in
eval mode whatever ``train()`` is called with), run under ``torch.no_grad()`` and never written into
checkpoints (``checkpoint_exclude``). At test time only the student runs, on camera input alone.

Two exact speed-ups of the teacher's forward (``fold_teacher_batchnorm``, on by default): after its
weights are loaded (and copied into the student by ``init_from_teacher``) each BatchNorm is folded
into the conv before it, its deploy form; and lifts of the same frustum and grid in teacher and
student share one splat structure per batch (the teacher reuses the one the student just built).

The losses are ``DISTILL_LOSSES`` modules listed in ``distill_losses``; each compares named tensors
of the two models (``camera_bev``, ``lidar_bev``, ``fused_bev``, ``decoder_out``, ``depth_logits``,
``heatmaps``, ``box_codes``) and may read the batch; each term is reported as
``loss/distill/<name>`` next to the student's own detection losses.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from mmdet3d.utils.checkpoint import CheckpointError, load_checkpoint_file, load_model_weights

from ..builder import DISTILL_LOSSES, DISTILLERS, FUSION_MODELS
from ..layers import fold_batchnorm
from ..vtransforms.base import depth_bin_centers, share_pool_structures

__all__ = ["BEVDistiller", "HEAD_TENSORS", "named_tensors", "resolve_model_config"]

INIT_FROM_TEACHER = ("fuser", "decoder", "heads")
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


HEAD_TENSORS = ("heatmaps", "box_codes")


def named_tensors(features: dict, preds: dict | None) -> dict[str, Any]:
    """The tensors a distillation loss may name: the feature maps plus, per task, the object head's
    heatmap logits (``heatmaps``) and box-code maps (``box_codes``: reg, height, dim, rot[, vel]).
    ``preds=None`` (heads not run) leaves the head entries out."""
    named = dict(features)
    if preds is None:
        return named
    tasks = preds.get("object", [])
    named["heatmaps"] = [t["heatmap"] for t in tasks]
    named["box_codes"] = [{k: v for k, v in t.items() if k != "heatmap"} for t in tasks]
    return named


def resolve_model_config(cfg: dict | str, what: str) -> dict:
    """A model config given inline or as the path of a config file (its ``model`` key)."""
    if isinstance(cfg, str):
        from mmdet3d.utils.config import ConfigError, load_config

        path = cfg if os.path.isabs(cfg) or os.path.isfile(cfg) else os.path.join(_REPO, cfg)
        if not os.path.isfile(path):
            raise ConfigError(f"BEVDistiller: {what} config not found: {cfg} (relative paths: from the working "
                              f"directory or the repository root {_REPO})")
        return load_config(path)["model"]
    if not isinstance(cfg, dict):
        raise TypeError(f"BEVDistiller: {what} must be a model config (dict) or a config file path, got {type(cfg).__name__}")
    return cfg


@DISTILLERS.register_module()
class BEVDistiller(nn.Module):
    """``model(batch)``: training -> student losses + ``loss/distill/<name>``; eval -> the student's
    predictions. ``teacher``/``student``: model configs (or config file paths for the teacher)."""

    checkpoint_exclude = ("teacher.",)

    def __init__(
        self,
        *,
        teacher: dict | str,
        student: dict,
        teacher_checkpoint: str | None,
        distill_losses: Sequence[dict] = (),
        init_from_teacher: Sequence[str] = (),
        camera_only_student: bool = True,
        fold_teacher_batchnorm: bool = True,
    ):
        super().__init__()
        self.teacher = FUSION_MODELS.build(resolve_model_config(teacher, "teacher"))
        self.student = FUSION_MODELS.build(resolve_model_config(student, "student"))
        if camera_only_student and self.student.reads_points:
            raise ValueError(
                "BEVDistiller: the student reads LiDAR (a LiDAR encoder or a DepthLSSTransform lift); a camera-only "
                "student needs encoders.lidar: null and a vtransform without LiDAR input (LSSTransform)"
            )
        self.teacher_checkpoint = teacher_checkpoint
        if teacher_checkpoint is not None:
            self.load_teacher(teacher_checkpoint)
        self.teacher.eval()
        self._init_from_teacher(init_from_teacher)
        self.teacher_batchnorms_folded = fold_batchnorm(self.teacher) if fold_teacher_batchnorm else 0
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        share_pool_structures(self.student, self.teacher)
        self.distill_losses = nn.ModuleList()
        for cfg in distill_losses:
            loss = DISTILL_LOSSES.build(cfg, **self._channel_args(cfg))
            if any(loss.name == other.name for other in self.distill_losses):
                raise ValueError(f"BEVDistiller: two distill_losses are named {loss.name!r}; give each a distinct name")
            self.distill_losses.append(loss)
        self.context = self._context()
        # The teacher's heads run only when a loss compares head outputs (TiG reads decoder_out).
        self.teacher_heads_needed = any(loss.teacher in HEAD_TENSORS or getattr(loss, "needs_teacher_heads", False)
                                        for loss in self.distill_losses)

    # ------------------------------------------------------------------------------- building
    def load_teacher(self, path: str) -> None:
        """Strict load of the teacher's weights; fails before training, naming missing keys."""
        if not os.path.isfile(path):
            raise CheckpointError(f"teacher_checkpoint not found: {path} (train the teacher first, or set model.teacher_checkpoint)")
        state = load_checkpoint_file(path).get("state_dict")
        if state is None:
            raise CheckpointError(f"teacher_checkpoint {path} has no 'state_dict'")
        if any(k.startswith("student.") for k in state):  # a distillation checkpoint: never a teacher
            raise CheckpointError(f"teacher_checkpoint {path} is a distillation checkpoint (student.* keys), not a teacher")
        load_model_weights(self.teacher, state, strict=True, source=f"teacher_checkpoint {path}")

    def _init_from_teacher(self, parts: Sequence[str]) -> None:
        for part in parts:
            if part not in INIT_FROM_TEACHER:
                raise ValueError(f"BEVDistiller: init_from_teacher entries must be in {list(INIT_FROM_TEACHER)}, got {part!r}")
            source, target = getattr(self.teacher, part), getattr(self.student, part)
            if source is None or target is None:
                raise ValueError(f"BEVDistiller: init_from_teacher {part!r}: the teacher or the student has no {part}")
            own, theirs = target.state_dict(), source.state_dict()
            wrong = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape]
            if wrong or len(own) != len(theirs):
                raise ValueError(f"BEVDistiller: init_from_teacher {part!r}: student and teacher {part} differ in shape at {wrong[:5]}")
            target.load_state_dict(theirs)

    def _channel_args(self, cfg: dict) -> dict:
        loss_cls = DISTILL_LOSSES.get(cfg["type"])
        if not getattr(loss_cls, "needs_channels", False):
            return {}
        student_key, teacher_key = cfg.get("student", loss_cls.default_student), cfg.get("teacher", loss_cls.default_teacher)
        channels = {}
        for who, model, key in (("student", self.student, student_key), ("teacher", self.teacher, teacher_key)):
            c = model.feature_channels.get(key)
            if c is None:
                raise ValueError(f"BEVDistiller: distill loss {cfg['type']}: the {who} has no {key!r} map "
                                 f"(maps: {sorted(k for k, v in model.feature_channels.items() if v)})")
            channels[f"{who}_channels"] = c
        return channels

    def _context(self) -> dict:
        """Geometry the losses need: the BEV range of the head grid, the student's depth bins, its
        object head (GT heatmaps and centres) and its lift's per-camera BEV footprints."""
        head = self.student.heads["object"]
        pc_range = head.coder.point_cloud_range
        context = {"bev_range": (pc_range[0], pc_range[1], pc_range[3], pc_range[4]), "object_head": head}
        if "camera" in self.student.encoders:
            vtransform = self.student.encoders["camera"]["vtransform"]
            context["dbound"] = vtransform.dbound
            context["depth_bins"] = depth_bin_centers(vtransform.dbound)
            context["frustum_bev_masks"] = vtransform.frustum_bev_masks
        return context

    # ------------------------------------------------------------------------------- running
    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen BatchNorm statistics and no dropout, always
        return self

    def forward(self, batch: dict):
        if not self.training:
            return self.student(batch)
        features, preds = self.student.forward_features(batch)
        losses = self.student.loss(batch, preds, features)
        if not self.distill_losses:
            return losses
        with torch.no_grad():
            if self.teacher_heads_needed:
                teacher = named_tensors(*self.teacher.forward_features(batch))
            else:
                teacher = named_tensors(self.teacher.extract_features(batch), None)
        student = named_tensors(features, preds)
        context = dict(self.context, cache={})  # per-step cache: losses share work (keypoint samples)
        for loss in self.distill_losses:
            losses[f"loss/distill/{loss.name}"] = loss(student, teacher, batch, context)
        return losses
