"""LSSTransform: lift-splat with a 1x1 depth net on the image features (BEVFusion's camera lift)."""
from __future__ import annotations

import torch
from torch import nn

from mmdet3d.models.builder import VTRANSFORMS

from .base import BaseTransform

__all__ = ["LSSTransform"]


@VTRANSFORMS.register_module()
class LSSTransform(BaseTransform):
    """A 1x1 conv predicts ``D`` depth logits and ``out_channels`` context features per pixel."""

    def __init__(self, **kwargs):
        """Keyword arguments: those of ``BaseTransform``."""
        super().__init__(**kwargs)
        self.depthnet = nn.Conv2d(self.in_channels, self.num_depth_bins + self.context_channels, 1)

    def get_depth_and_context(self, img_feats: torch.Tensor, batch: dict):
        """(B, N, C_in, fH, fW) -> depth logits (B, N, D, fH, fW), context (B, N, C, fH, fW)."""
        batch_size, num_cams = img_feats.shape[:2]
        out = self.depthnet(img_feats.flatten(0, 1))  # (B*N, C_in, fH, fW) -> (B*N, D + C, fH, fW)
        return self.split_depth_context(out, batch_size, num_cams)
