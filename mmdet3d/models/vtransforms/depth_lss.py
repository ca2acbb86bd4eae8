"""DepthLSSTransform: lift-splat whose depth net also sees the sparse LiDAR depth image (BEVFusion)."""
from __future__ import annotations

import torch
from torch import nn

from mmdet3d.models.builder import VTRANSFORMS
from mmdet3d.models.layers import conv_bn_relu

from .base import BaseTransform

__all__ = ["DepthLSSTransform", "points_to_depth_image"]


def points_to_depth_image(points, lidar2image, img_aug_matrix, lidar_aug_matrix, image_size) -> torch.Tensor:
    """Project LiDAR points into every augmented camera image; keep the nearest depth per pixel.

    points: list of B tensors (P_b, >=3) in the augmented LiDAR frame; lidar2image, img_aug_matrix
    (B, N, 4, 4); lidar_aug_matrix (B, 4, 4); image_size (iH, iW). Returns (B, N, iH, iW) camera
    depth in metres, 0 where no point projects. Pixel ``(row, col)`` holds points projecting to
    ``round(v), round(u)`` (integer pixel centres).
    """
    batch_size, num_cams = lidar2image.shape[:2]
    image_h, image_w = (int(s) for s in image_size)
    depth = lidar2image.new_zeros(batch_size, num_cams * image_h * image_w)
    cam_offset = (torch.arange(num_cams, device=lidar2image.device) * (image_h * image_w))[:, None]
    for b in range(batch_size):
        xyz = points[b][:, :3].to(lidar2image.dtype)
        # augmented LiDAR frame -> raw LiDAR -> image plane as one (N, 3, 4) map per sample; only
        # the two rows of img_aug_matrix that give the pixel are applied
        to_image = (lidar2image[b] @ torch.linalg.inv(lidar_aug_matrix[b]))[:, :3]
        cam = torch.baddbmm(to_image[:, :, 3:], to_image[:, :, :3], xyz.t().expand(num_cams, 3, -1))  # (N, 3, P)
        z = cam[:, 2]
        front = z > 1e-3
        safe_z = torch.where(front, z, 1.0)
        u, v = cam[:, 0] / safe_z, cam[:, 1] / safe_z
        aug = img_aug_matrix[b]
        col = torch.floor(aug[:, 0, 0:1] * u + aug[:, 0, 1:2] * v + aug[:, 0, 2:3] * z + (aug[:, 0, 3:4] + 0.5)).long()
        row = torch.floor(aug[:, 1, 0:1] * u + aug[:, 1, 1:2] * v + aug[:, 1, 2:3] * z + (aug[:, 1, 3:4] + 0.5)).long()
        valid = front & (col >= 0) & (col < image_w) & (row >= 0) & (row < image_h)
        index = cam_offset + row * image_w + col
        depth[b].scatter_reduce_(0, index[valid], z[valid], reduce="amin", include_self=False)
    return depth.view(batch_size, num_cams, image_h, image_w)


def _stride_factors(stride: int) -> list[int]:
    factors = []
    for f in (4, 2):
        while stride % f == 0:
            factors.append(f)
            stride //= f
    return factors + ([stride] if stride > 1 else [])


@VTRANSFORMS.register_module()
class DepthLSSTransform(BaseTransform):
    """LSS with a depth branch: the LiDAR depth image (B*N, 1, iH, iW) goes through a small strided
    conv net down to the feature stride, is concatenated with the image features and a conv depth
    net predicts ``D`` depth logits and ``out_channels`` context features."""

    reads_points = True  # the depth net sees projected LiDAR: never a camera-only model

    def __init__(self, *, depth_channels: int = 64, **kwargs):
        """``depth_channels``: width of the depth-image branch; other keyword arguments: those of ``BaseTransform``."""
        super().__init__(**kwargs)
        in_channels, out_channels = self.in_channels, self.context_channels
        stride_h, rem_h = divmod(self.image_size[0], self.feature_size[0])
        stride_w, rem_w = divmod(self.image_size[1], self.feature_size[1])
        if rem_h or rem_w or stride_h != stride_w:
            raise ValueError(f"image_size {self.image_size} must be an integer multiple of feature_size {self.feature_size}")
        layers = [conv_bn_relu(1, 8, 1)]
        channels = 8
        for i, stride in enumerate(_stride_factors(stride_h)):
            width = 32 if i == 0 else depth_channels
            layers.append(conv_bn_relu(channels, width, (stride + 1) | 1, stride=stride))
            channels = width
        if channels != depth_channels:
            layers.append(conv_bn_relu(channels, depth_channels, 3))
        self.dtransform = nn.Sequential(*layers)
        self.depthnet = nn.Sequential(
            conv_bn_relu(in_channels + depth_channels, in_channels, 3),
            conv_bn_relu(in_channels, in_channels, 3),
            nn.Conv2d(in_channels, self.num_depth_bins + out_channels, 1),
        )

    def get_depth_and_context(self, img_feats: torch.Tensor, batch: dict):
        """(B, N, C_in, fH, fW) + ``batch["points"]`` -> depth logits (B, N, D, fH, fW), context (B, N, C, fH, fW)."""
        batch_size, num_cams = img_feats.shape[:2]
        depth_image = points_to_depth_image(
            batch["points"], batch["lidar2image"], batch["img_aug_matrix"], batch["lidar_aug_matrix"], self.image_size
        ).to(img_feats.dtype)
        depth_feats = self.dtransform(depth_image.flatten(0, 1).unsqueeze(1))  # (B*N, 1, iH, iW) -> (B*N, Cd, fH, fW)
        out = self.depthnet(torch.cat([img_feats.flatten(0, 1), depth_feats], dim=1))  # (B*N, D + C, fH, fW)
        return self.split_depth_context(out, batch_size, num_cams)
