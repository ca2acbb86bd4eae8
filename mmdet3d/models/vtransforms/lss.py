"""LSSTransform: lift-splat with a 1x1 depth net on the image features (BEVFusion's camera lift)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mmdet3d.models.builder import VTRANSFORMS

from .base import BaseTransform

__all__ = ["LSSTransform"]


@VTRANSFORMS.register_module()
class LSSTransform(BaseTransform):
    """A 1x1 conv predicts ``D`` depth logits and ``out_channels`` context features per pixel."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        image_size: Sequence[int],
        feature_size: Sequence[int],
        xbound: Sequence[float],
        ybound: Sequence[float],
        zbound: Sequence[float],
        dbound: Sequence[float],
        downsample: int = 1,
        reference_pool: bool = False,
    ):
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, image_size=image_size,
            feature_size=feature_size, xbound=xbound, ybound=ybound, zbound=zbound, dbound=dbound,
            downsample=downsample, reference_pool=reference_pool,
        )
        self.depthnet = nn.Conv2d(in_channels, self.num_depth_bins + out_channels, 1)

    def get_depth_and_context(self, img_feats: torch.Tensor, batch: dict):
        """(B, N, C_in, fH, fW) -> depth logits (B, N, D, fH, fW), context (B, N, C, fH, fW)."""
        batch_size, num_cams = img_feats.shape[:2]
        out = self.depthnet(img_feats.flatten(0, 1))  # (B*N, D + C, fH, fW)
        out = out.view(batch_size, num_cams, *out.shape[1:])
        return out[:, :, : self.num_depth_bins], out[:, :, self.num_depth_bins :]
