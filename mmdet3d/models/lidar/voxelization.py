"""Registered voxelizers: the batch-level modules around ``mmdet3d.ops.voxelize``.

``Voxelization`` (hard: at most ``max_num_points`` per voxel, the first in point order) feeds
``PillarFeatureNet`` and the sparse encoder; ``DynamicVoxelization`` keeps every point with its
voxel and feeds ``DynamicPillarFeatureNet``, so that sweep points, which come after the keyframe's,
are not cut off in dense pillars.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mmdet3d.ops.voxelize import dynamic_voxelize, voxel_grid_size, voxelize

from ..builder import VOXELIZERS

__all__ = ["Voxelization", "DynamicVoxelization"]


class _VoxelizerBase(nn.Module):
    def __init__(self, voxel_size: Sequence[float], point_cloud_range: Sequence[float], in_channels: int):
        super().__init__()
        self.voxel_size = [float(v) for v in voxel_size]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.in_channels = self.out_channels = in_channels
        self.grid_size = voxel_grid_size(self.voxel_size, self.point_cloud_range)


@VOXELIZERS.register_module()
class Voxelization(_VoxelizerBase):
    """Voxelize a batch: list of B point clouds (P_b, F) -> feats, coords (V, 4), sizes (V,).

    ``coords`` rows are ``(batch_index, z, y, x)``; feats are (V, M, F) or (V, F) with
    ``reduce="mean"``; ``sizes`` the number of kept points per voxel. ``max_voxels`` may be a pair
    ``(train, test)`` chosen by ``self.training``. ``grid_size`` is ``(nx, ny, nz)``.
    """

    def __init__(
        self,
        *,
        voxel_size: Sequence[float],
        point_cloud_range: Sequence[float],
        max_num_points: int = 10,
        max_voxels: int | Sequence[int] = (90000, 120000),
        reduce: str = "none",
        in_channels: int = 5,
        deterministic: bool = True,
    ):
        super().__init__(voxel_size, point_cloud_range, in_channels)
        self.max_num_points = max_num_points
        self.max_voxels = (max_voxels, max_voxels) if isinstance(max_voxels, int) else tuple(max_voxels)
        self.reduce = reduce
        self.deterministic = deterministic

    def forward(self, points: Sequence[torch.Tensor]):
        max_voxels = self.max_voxels[0] if self.training else self.max_voxels[1]
        feats, coords, sizes = [], [], []
        for b, cloud in enumerate(points):
            f, c, n = voxelize(cloud, self.voxel_size, self.point_cloud_range, self.max_num_points,
                               max_voxels, self.deterministic, self.reduce)
            feats.append(f)
            coords.append(torch.cat([torch.full_like(c[:, :1], b), c], dim=1))
            sizes.append(n)
        if self.reduce == "none" and self.max_num_points <= 0:
            width = max(f.shape[1] for f in feats)
            feats = [torch.nn.functional.pad(f, (0, 0, 0, width - f.shape[1])) for f in feats]
        return torch.cat(feats), torch.cat(coords), torch.cat(sizes)


@VOXELIZERS.register_module()
class DynamicVoxelization(_VoxelizerBase):
    """Every in-range point with its voxel: list of B clouds (P_b, F) -> points (P, F), coords (P, 4), None.

    ``coords`` rows are ``(batch_index, z, y, x)`` per point, in the same layout as ``Voxelization``'s
    voxel rows, so the fusion model treats both alike; points outside ``point_cloud_range`` are
    dropped. The third value (per-voxel sizes) does not exist for per-point output.
    """

    def __init__(self, *, voxel_size: Sequence[float], point_cloud_range: Sequence[float], in_channels: int = 5):
        super().__init__(voxel_size, point_cloud_range, in_channels)

    def forward(self, points: Sequence[torch.Tensor]):
        feats, coords = [], []
        for b, cloud in enumerate(points):
            c = dynamic_voxelize(cloud, self.voxel_size, self.point_cloud_range)
            inside = c[:, 0] >= 0
            feats.append(cloud[inside])
            coords.append(torch.cat([torch.full_like(c[inside, :1], b), c[inside]], dim=1))
        return torch.cat(feats), torch.cat(coords), None
