"""Hard voxelization in pure PyTorch with mmcv's semantics.

A point's voxel is ``floor((xyz - range_min) / voxel_size)``; points outside
``point_cloud_range = [x_min, y_min, z_min, x_max, y_max, z_max]`` (half-open) are dropped; the grid
has ``round((max - min) / voxel_size)`` voxels per axis. Voxels are numbered in order of their
first point (point order); only the first ``max_voxels`` voxels are kept, and in each voxel the
first ``max_num_points`` points in point order. Coordinates are ``(z, y, x)`` indices as in mmcv.
The result is deterministic (the ``deterministic`` flag of mmcv's CUDA op is accepted for
compatibility; this implementation has no non-deterministic mode).

``dynamic_voxelize`` keeps every point and gives each its voxel (mmcv's dynamic voxelization), for
encoders that pool all points of a voxel instead of the first ``max_num_points``. The registered
modules that wrap both live beside the LiDAR encoders (``mmdet3d/models/lidar/voxelization.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
__all__ = ["voxelize", "dynamic_voxelize", "voxel_grid_size"]


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


def dynamic_voxelize(points: torch.Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> torch.Tensor:
    """points (P, F) -> (P, 3) int64 ``(z, y, x)`` voxel of every point, ``-1`` rows outside the range."""
    nx, ny, nz = voxel_grid_size(voxel_size, point_cloud_range)
    ijk = torch.floor((points[:, :3] - points.new_tensor(point_cloud_range[:3])) / points.new_tensor(voxel_size))
    valid = ((ijk >= 0) & (ijk < points.new_tensor([nx, ny, nz]))).all(dim=1)
    coords = ijk.long().flip(1)  # (x, y, z) -> (z, y, x) as mmcv
    coords[~valid] = -1
    return coords
