"""The interface of a distillation loss module (``DISTILL_LOSSES``)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["DistillLoss"]


class DistillLoss(nn.Module):
    """``loss(student, teacher, batch, context) -> scalar``, already multiplied by ``weight``.

    ``student`` / ``teacher``: the models' named tensors (``named_tensors``); ``self.student`` and
    ``self.teacher`` name the entries compared. ``batch`` holds the GT boxes and the depth and
    foreground maps; ``context`` the geometry (``bev_range``, ``dbound``, ``depth_bins``) and
    ``cache``, a dict that lives for one training step, where losses share intermediate results.
    The distiller runs the teacher's heads only if some loss names ``heatmaps``/``box_codes`` as its
    ``teacher`` or sets ``needs_teacher_heads = True``.
    ``name`` becomes the logged key ``loss/distill/<name>``. Subclasses that build an adapter set
    ``needs_channels = True`` and receive ``student_channels`` / ``teacher_channels``.
    ``visual_masks`` shows where a loss looks (``tools/visualize.py``); a loss that weights or samples
    BEV cells overrides it.
    """

    needs_channels = False
    needs_teacher_heads = False
    default_student: str | None = None
    default_teacher: str | None = None
    default_name = "distill"

    def __init__(self, *, weight: float = 1.0, name: str | None = None, student: str | None = None,
                 teacher: str | None = None):
        super().__init__()
        self.weight = float(weight)
        self.name = name or self.default_name
        self.student = student or self.default_student
        self.teacher = teacher or self.default_teacher

    @staticmethod
    def pick(tensors: dict[str, Any], key: str, who: str) -> Any:
        value = tensors.get(key)
        if value is None:
            have = sorted(k for k, v in tensors.items() if v is not None)
            raise KeyError(f"distill loss: the {who} has no tensor {key!r} (it has {have})")
        return value

    @staticmethod
    def need(batch: dict, key: str, loss_name: str) -> torch.Tensor:
        if key not in batch:
            raise KeyError(f"distill loss {loss_name!r} needs batch[{key!r}]; add the pipeline step that makes it "
                           "(DepthTargets for depth_map / fg_map)")
        return batch[key]

    def visual_masks(self, student: dict[str, Any], teacher: dict[str, Any], batch: dict,
                     context: dict) -> dict[str, Any]:
        """The masks or sample positions this loss uses, by caption: a (B, X, Y) tensor (a mask over
        ``context["bev_range"]``) or a list of B (P_b, 2) tensors of metric BEV positions. None here."""
        return {}
