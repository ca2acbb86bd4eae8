"""Hard voxelization in pure PyTorch with mmcv's semantics.

A point's voxel is ``floor((xyz - range_min) / voxel_size)``; points outside
``point_cloud_range = [x_min, y_min, z_min, x_max, y_max, z_max]`` (half-open) are dropped; the grid
has ``round((max - min) / voxel_size)`` voxels per axis. Voxels are numbered in order of their
first point (point order); only the first ``max_voxels`` voxels are kept, and in each voxel the
first ``max_num_points`` points in point order. Coordinates are ``(z, y, x)`` indices as in mmcv.
The result is deterministic (the ``deterministic`` flag of mmcv's CUDA op is accepted for
compatibility; this implementation has no non-deterministic mode).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mmdet3d.models.builder import VOXELIZERS

__all__ = ["voxelize", "Voxelization", "voxel_grid_size"]


def voxel_grid_size(voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> tuple[int, int, int]:
    """-> (nx, ny, nz) number of voxels per axis."""
    return tuple(int(round((point_cloud_range[i + 3] - point_cloud_range[i]) / voxel_size[i])) for i in range(3))


def voxelize(
    points: torch.Tensor,
    voxel_size: Sequence[float],
    point_cloud_range: Sequence[float],
    max_num_points: int = 35,
    max_voxels: int = 20000,
    deterministic: bool = True,
    reduce: str = "none",
):
    """points (P, F) -> voxels, coords (V, 3) int64 ``(z, y, x)``, num_points (V,) int64.

    ``reduce="none"``: voxels (V, M, F) zero-padded, M = ``max_num_points``; ``reduce="mean"``:
    voxels (V, F), the mean of the kept points. ``max_num_points <= 0`` keeps every point
    (M = the largest voxel), ``max_voxels <= 0`` every voxel.
    """
    if reduce not in ("none", "mean"):
        raise ValueError(f"reduce must be 'none' or 'mean', got {reduce!r}")
    num_feats = points.shape[1]
    device = points.device
    nx, ny, nz = voxel_grid_size(voxel_size, point_cloud_range)
    lower = points.new_tensor(point_cloud_range[:3])
    size = points.new_tensor(voxel_size)
    ijk = torch.floor((points[:, :3] - lower) / size)  # (P, 3) as (x, y, z)
    valid = ((ijk >= 0) & (ijk < points.new_tensor([nx, ny, nz]))).all(dim=1)
    point_idx = valid.nonzero().squeeze(1)
    ijk = ijk[point_idx].long()
    linear = (ijk[:, 2] * ny + ijk[:, 1]) * nx + ijk[:, 0]
    unique_linear, inverse = torch.unique(linear, return_inverse=True)
    num_unique = unique_linear.numel()
    order = torch.arange(point_idx.numel(), device=device)
    first = torch.full((num_unique,), point_idx.numel(), dtype=torch.long, device=device)
    first.scatter_reduce_(0, inverse, order, reduce="amin")
    by_appearance = torch.argsort(first)  # voxel ids in order of their first point
    rank = torch.empty_like(by_appearance)
    rank[by_appearance] = torch.arange(num_unique, device=device)
    voxel_id = rank[inverse]  # (P_valid,) voxel of each valid point, numbered by appearance
    num_voxels = num_unique if max_voxels <= 0 else min(num_unique, max_voxels)

    sorted_id, perm = torch.sort(voxel_id, stable=True)  # points grouped by voxel, point order inside
    counts = torch.bincount(voxel_id, minlength=num_unique)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(sorted_id.numel(), device=device) - starts[sorted_id]
    limit = int(counts.max()) if (max_num_points <= 0 and counts.numel()) else max(max_num_points, 0)
    keep = (sorted_id < num_voxels) & (slot < limit)
    voxel_of, slot_of = sorted_id[keep], slot[keep]
    kept_points = points[point_idx[perm[keep]]]
    num_points = torch.clamp(counts[:num_voxels], max=limit)

    lin = unique_linear[by_appearance[:num_voxels]]
    coords = torch.stack([lin // (nx * ny), (lin // nx) % ny, lin % nx], dim=1)
    if reduce == "mean":
        voxels = points.new_zeros(num_voxels, num_feats).index_add_(0, voxel_of, kept_points)
        voxels = voxels / num_points.clamp(min=1).unsqueeze(1).to(points.dtype)
    else:
        voxels = points.new_zeros(num_voxels, limit, num_feats)
        voxels[voxel_of, slot_of] = kept_points
    return voxels, coords, num_points


@VOXELIZERS.register_module()
class Voxelization(nn.Module):
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
        super().__init__()
        self.voxel_size = [float(v) for v in voxel_size]
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.max_num_points = max_num_points
        self.max_voxels = (max_voxels, max_voxels) if isinstance(max_voxels, int) else tuple(max_voxels)
        self.reduce = reduce
        self.deterministic = deterministic
        self.in_channels = self.out_channels = in_channels
        self.grid_size = voxel_grid_size(self.voxel_size, self.point_cloud_range)

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
