"""PointPillars LiDAR encoder: pillar feature net + scatter to a BEV pseudo-image.

Voxel coordinates are ``(batch, x_index, y_index, z_index)`` rows (int64); pillars have a
single z cell. BEV maps are laid out ``(B, C, X, Y)`` like every BEV map in the project.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..builder import LIDAR_BACKBONES
from ..layers import batchnorm_affine, fold_linear_batchnorm

__all__ = ["PillarFeatureNet", "DynamicPillarFeatureNet", "PointPillarsScatter", "PointPillarsEncoder", "bev_grid_size"]


def bev_grid_size(point_cloud_range: Sequence[float], voxel_size: Sequence[float]) -> tuple[int, int]:
    """(X, Y) cells of ``voxel_size`` covering ``point_cloud_range``."""
    return (
        int(round((point_cloud_range[3] - point_cloud_range[0]) / voxel_size[0])),
        int(round((point_cloud_range[4] - point_cloud_range[1]) / voxel_size[1])),
    )


@LIDAR_BACKBONES.register_module()
class PillarFeatureNet(nn.Module):
    """Pillars (V, M, C_point) with point counts (V,) -> pillar features (V, C_out).

    Each point is decorated with its offset to the mean of its pillar's points (3, when
    ``with_cluster_center``), its x/y offset to the pillar centre (2, ``with_voxel_center``)
    and its range (1, ``with_distance``); padded points are zeroed. Then per layer of
    ``feat_channels``: linear -> BN -> ReLU, and a max over the pillar's points (intermediate
    layers concatenate the max back onto each point, as in PointPillars' PFN).
    """

    def __init__(
        self,
        in_channels: int = 5,
        feat_channels: Sequence[int] = (64,),
        point_cloud_range: Sequence[float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
        voxel_size: Sequence[float] = (0.2, 0.2, 8.0),
        with_cluster_center: bool = True,
        with_voxel_center: bool = True,
        with_distance: bool = False,
        pillar_point_features: int = 0,
        point_scale: Sequence[float] | None = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.grid_size = bev_grid_size(point_cloud_range, voxel_size)
        self.with_cluster_center, self.with_voxel_center, self.with_distance = (
            with_cluster_center, with_voxel_center, with_distance)
        self.register_buffer("voxel_size", torch.tensor(voxel_size[:2], dtype=torch.float32), persistent=False)
        self.register_buffer("grid_origin", torch.tensor(point_cloud_range[:2], dtype=torch.float32), persistent=False)
        # point_scale: a factor per raw point feature as the first layer reads it (e.g. x, y / 51.2 and
        # the time lag x 2, so that metres of range do not outweigh fractions of a second)
        scale = [1.0] * in_channels if point_scale is None else [float(v) for v in point_scale]
        if len(scale) != in_channels:
            raise ValueError(f"{type(self).__name__}: point_scale has {len(scale)} values for {in_channels} point features")
        self.register_buffer("point_scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        # pillar_point_features: per-pillar values a subclass appends to each point's decoration
        width = in_channels + 3 * with_cluster_center + 2 * with_voxel_center + with_distance + pillar_point_features
        self.linears, self.norms = nn.ModuleList(), nn.ModuleList()
        for i, out in enumerate(feat_channels):
            last = i == len(feat_channels) - 1
            layer_out = out if last else out // 2
            self.linears.append(nn.Linear(width, layer_out, bias=False))
            self.norms.append(nn.BatchNorm1d(layer_out))
            width = layer_out * 2
        self.out_channels = feat_channels[-1]

    def decorate(self, voxels: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """(V, M, C_point) -> (V, M, C_point + extras), padded points zeroed."""
        num_max = voxels.shape[1]
        mask = torch.arange(num_max, device=voxels.device)[None, :] < num_points[:, None]  # (V, M)
        features = [voxels * self.point_scale]
        if self.with_cluster_center:
            mean = (voxels[..., :3] * mask[..., None]).sum(1) / num_points.clamp(min=1)[:, None].to(voxels.dtype)
            features.append(voxels[..., :3] - mean[:, None, :])
        if self.with_voxel_center:
            centre = (coords[:, 1:3].to(voxels.dtype) + 0.5) * self.voxel_size + self.grid_origin  # (V, 2)
            features.append(voxels[..., :2] - centre[:, None, :])
        if self.with_distance:
            features.append(voxels[..., :3].norm(dim=-1, keepdim=True))
        return torch.cat(features, dim=-1) * mask[..., None]

    def fold_batchnorm(self) -> int:
        """Frozen deploy form (``mmdet3d.models.layers.fold_batchnorm``): each BatchNorm1d into its linear."""
        folded = 0
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            if isinstance(norm, nn.BatchNorm1d):  # already folded: nn.Identity
                self.norms[i] = fold_linear_batchnorm(linear, norm)
                folded += 1
        return folded

    def forward(self, voxels: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        x = self.decorate(voxels, num_points, coords)
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            # BatchNorm1d over channels: (V, M, C) -> (V, C, M) and back
            x = torch.relu(norm(linear(x).transpose(1, 2)).transpose(1, 2))
            pooled = x.max(dim=1, keepdim=True).values  # (V, 1, C)
            if i < len(self.linears) - 1:
                x = torch.cat([x, pooled.expand_as(x)], dim=-1)
            else:
                x = pooled
        return x.squeeze(1)


@LIDAR_BACKBONES.register_module()
class DynamicPillarFeatureNet(PillarFeatureNet):
    """Every point of every pillar: points (P, C_point) with per-point coords (P, 4) ``(b, x, y, z)``
    -> pillar features (V, C_out) and pillar coords (V, 4).

    The same decorations and layers as ``PillarFeatureNet``, but the pillar mean and the max run
    over all of a pillar's points by scatter (as mmdetection3d's dynamic PFN), so no point is cut
    off in dense pillars: with hard pillars of 10 points the keyframe fills most pillars near the
    sensor and the sweeps that carry motion barely reach the network. Pillars are numbered in
    ``(b, x, y)`` order. Takes the output of ``DynamicVoxelization`` (``num_points`` is unused).

    ``time_lag_bins`` (upper edges in seconds, e.g. ``[0.075, 0.225, 0.375]`` for the keyframe and
    sweeps at 0.15 / 0.3 / 0.45 s) adds per-sweep pillar statistics to every point's decoration
    (``sweep_stats``): for each lag bin, the share of the pillar's points in it and their mean x/y
    offset to the pillar centre in pillar widths (0 where the bin is empty). An object's motion
    within 0.45 s is often less than a pillar (a pedestrian: 0.6 m); a max over decorated points
    hides which end of a pillar the old points are at, the per-bin means show it directly. The
    output width stays ``feat_channels[-1]``. ``time_lag_column``: the lag's column in the points.
    ``lag_velocity`` adds the pillar's least-squares motion, ``-cov(lag, xy) / var(lag)`` over its
    points in m/s (0 where all its points share one lag): a static surface gives 0, an object that
    fills the pillar its velocity, so the head reads the motion without inferring it from the bins.
    """

    def __init__(self, *args, time_lag_bins: Sequence[float] | None = None, time_lag_column: int = 4,
                 lag_velocity: bool = False, **kwargs):
        edges = [] if time_lag_bins is None else [float(t) for t in time_lag_bins]
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"DynamicPillarFeatureNet: time_lag_bins must increase, got {edges}")
        if lag_velocity and not edges:
            raise ValueError("DynamicPillarFeatureNet: lag_velocity needs time_lag_bins")
        num_lag_bins = len(edges) + 1 if edges else 0
        super().__init__(*args, pillar_point_features=3 * num_lag_bins + 2 * bool(lag_velocity), **kwargs)
        self.lag_velocity = bool(lag_velocity)
        if edges and not 0 <= time_lag_column < self.in_channels:
            raise ValueError(f"DynamicPillarFeatureNet: time_lag_column {time_lag_column} is not one of the "
                             f"{self.in_channels} point features")
        self.time_lag_column, self.num_lag_bins = time_lag_column, num_lag_bins
        self.register_buffer("time_lag_bins", torch.tensor(edges, dtype=torch.float32), persistent=False)

    def _pillars(self, coords: torch.Tensor, dtype: torch.dtype):
        """Per-point coords (P, 4) -> each point's pillar (P,), point counts (V,), pillar coords
        (V, 4) in ``(b, x, y)`` order and pillar centres (V, 2) in metres."""
        num_x, num_y = self.grid_size
        pillars, inverse = _pillar_index((coords[:, 0] * num_x + coords[:, 1]) * num_y + coords[:, 2])
        counts = torch.bincount(inverse, minlength=pillars.numel()).clamp(min=1).to(dtype)
        pillar_coords = torch.stack(
            [pillars // (num_x * num_y), (pillars // num_y) % num_x, pillars % num_y, torch.zeros_like(pillars)], dim=1)
        centre = (pillar_coords[:, 1:3].to(dtype) + 0.5) * self.voxel_size + self.grid_origin
        return inverse, counts, pillar_coords, centre

    def forward(self, points: torch.Tensor, num_points: torch.Tensor | None, coords: torch.Tensor):
        inverse, counts, pillar_coords, centre = self._pillars(coords, points.dtype)
        num_pillars = counts.numel()
        mean = None
        if self.with_cluster_center:
            mean = points.new_zeros(num_pillars, 3).index_add_(0, inverse, points[:, :3]) / counts[:, None]
        stats = self._sweep_stats(points, inverse, counts, centre) if self.num_lag_bins else None
        if len(self.linears) == 1 and not self.training:
            return self._pool_affine(points, inverse, mean, centre, stats), pillar_coords
        features = [points * self.point_scale]
        if self.with_cluster_center:
            features.append(points[:, :3] - mean[inverse])
        if self.with_voxel_center:
            features.append(points[:, :2] - centre[inverse])
        if self.with_distance:
            features.append(points[:, :3].norm(dim=-1, keepdim=True))
        if stats is not None:
            features.append(stats[inverse])
        x = torch.cat(features, dim=-1)
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            x = torch.relu(norm(linear(x)))  # (P, C)
            pooled = _scatter_max(x, inverse, num_pillars)
            x = torch.cat([x, pooled[inverse]], dim=-1) if i < len(self.linears) - 1 else pooled
        return x, pillar_coords

    def sweep_stats(self, points: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-sweep statistics alone: (V, 3 * bins [+ 2]) per pillar and the pillar coords (V, 4)."""
        inverse, counts, pillar_coords, centre = self._pillars(coords, points.dtype)
        return self._sweep_stats(points, inverse, counts, centre), pillar_coords

    def _sweep_stats(self, points, inverse, counts, centre) -> torch.Tensor:
        """(V, 3 * bins [+ 2]): per lag bin, the share of the pillar's points and their mean x/y offset
        to the pillar centre over the pillar width, bin-major; then the least-squares velocity."""
        lag = points[:, self.time_lag_column].contiguous()
        lag_bin = torch.bucketize(lag, self.time_lag_bins)  # (P,)
        cell = inverse * self.num_lag_bins + lag_bin
        offset = (points[:, :2] - centre[inverse]) / self.voxel_size
        sums = points.new_zeros(centre.shape[0] * self.num_lag_bins, 3).index_add_(
            0, cell, torch.cat([torch.ones_like(offset[:, :1]), offset], dim=1))
        in_bin = sums[:, :1]
        stats = torch.cat([in_bin / counts.repeat_interleave(self.num_lag_bins)[:, None],
                           sums[:, 1:] / in_bin.clamp(min=1)], dim=1)
        stats = stats.view(centre.shape[0], 3 * self.num_lag_bins)
        if not self.lag_velocity:
            return stats
        # per pillar: sums of lag, lag^2, xy and lag * xy -> -cov(lag, xy) / var(lag)
        metres = offset * self.voxel_size  # about the pillar centre: no cancellation at 50 m
        moments = torch.cat([lag[:, None], lag[:, None] ** 2, metres, lag[:, None] * metres], dim=1)
        sums = points.new_zeros(centre.shape[0], 6).index_add_(0, inverse, moments) / counts[:, None]
        variance = sums[:, 1:2] - sums[:, 0:1] ** 2
        covariance = sums[:, 4:6] - sums[:, 0:1] * sums[:, 2:4]
        velocity = torch.where(variance > 1e-4, -covariance / variance.clamp(min=1e-4), 0.0)
        return torch.cat([stats, velocity], dim=1)

    def _pool_affine(self, points, inverse, mean, centre, stats=None) -> torch.Tensor:
        """One layer with a fixed affine norm (eval or folded): the same values with no per-point decoration.

        ``relu(norm(W @ [p, p - mean, p - centre]))`` is affine in ``p`` plus a per-pillar constant,
        so its max over a pillar is the max of ``W' p`` plus that constant, and the ReLU commutes
        with the max: only ``(P, C_point) @ (C_point, C)`` and one scatter-max run per point.
        """
        linear, norm = self.linears[0], self.norms[0]
        weight = linear.weight
        bias = linear.bias if linear.bias is not None else weight.new_zeros(weight.shape[0])
        if isinstance(norm, nn.BatchNorm1d):  # eval: y = x * scale + shift per channel
            scale, shift = batchnorm_affine(norm)
            weight, bias = weight * scale[:, None], bias * scale + shift
        c = self.in_channels
        point_weight = weight[:, :c] * self.point_scale  # (C, C_point): the weight every point feature gets
        pillar_bias = bias.expand(centre.shape[0], -1)  # (V, C)
        col = c
        if self.with_cluster_center:
            point_weight[:, :3] += weight[:, col:col + 3]
            pillar_bias = pillar_bias - mean @ weight[:, col:col + 3].t()
            col += 3
        if self.with_voxel_center:
            point_weight[:, :2] += weight[:, col:col + 2]
            pillar_bias = pillar_bias - centre @ weight[:, col:col + 2].t()
            col += 2
        per_point = points @ point_weight.t()  # (P, C)
        if self.with_distance:
            per_point = per_point + points[:, :3].norm(dim=-1, keepdim=True) * weight[:, col]
            col += 1
        if stats is not None:  # per-pillar decorations: a per-pillar constant
            pillar_bias = pillar_bias + stats @ weight[:, col:].t()
        return torch.relu(_scatter_max(per_point, inverse, centre.shape[0]) + pillar_bias)


def _pillar_index(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(key, return_inverse=True)`` for non-negative cell keys, without a sort:
    occupied keys in increasing order and each point's pillar number (a bincount over the grid)."""
    occupied = torch.bincount(key) > 0
    pillars = occupied.nonzero().squeeze(1)
    remap = torch.cumsum(occupied, 0) - 1
    return pillars, remap[key]


def _scatter_max(x: torch.Tensor, inverse: torch.Tensor, num_pillars: int) -> torch.Tensor:
    """(P, C) point rows -> (V, C): the max over each pillar's points."""
    index = inverse[:, None].expand(-1, x.shape[1])
    return x.new_zeros(num_pillars, x.shape[1]).scatter_reduce(0, index, x, reduce="amax", include_self=False)


@LIDAR_BACKBONES.register_module()
class PointPillarsScatter(nn.Module):
    """Pillar features (V, C) at coords (V, 4) ``(b, x, y, z)`` -> BEV (B, C, X, Y), zeros elsewhere."""

    def __init__(self, in_channels: int, output_shape: Sequence[int]):
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.output_shape = (int(output_shape[0]), int(output_shape[1]))

    def forward(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        num_x, num_y = self.output_shape
        canvas = features.new_zeros(batch_size * num_x * num_y, features.shape[1])
        flat = (coords[:, 0] * num_x + coords[:, 1]) * num_y + coords[:, 2]
        canvas = canvas.index_put((flat.long(),), features, accumulate=True)
        # (B*X*Y, C) -> (B, C, X, Y)
        return canvas.view(batch_size, num_x, num_y, -1).permute(0, 3, 1, 2).contiguous()


@LIDAR_BACKBONES.register_module()
class PointPillarsEncoder(nn.Module):
    """Voxelised points -> BEV (B, C, X, Y): ``PillarFeatureNet`` (or ``DynamicPillarFeatureNet`` on
    per-point input) then ``PointPillarsScatter``.

    ``in_channels`` (the voxelizer's point feature count, passed by the fusion model) reaches the
    feature net unless its config sets one. The scatter's ``in_channels`` and ``output_shape`` are the feature net's ``out_channels`` and
    ``grid_size`` (from its ``point_cloud_range`` and ``voxel_size``) unless given.
    """

    def __init__(self, pts_voxel_encoder: dict, pts_middle_encoder: dict | None = None, in_channels: int | None = None):
        super().__init__()
        point_features = {} if in_channels is None else {"in_channels": in_channels}
        self.pts_voxel_encoder = LIDAR_BACKBONES.build(pts_voxel_encoder, **point_features)
        self.pts_middle_encoder = LIDAR_BACKBONES.build(
            pts_middle_encoder or dict(type="PointPillarsScatter"),
            in_channels=self.pts_voxel_encoder.out_channels, output_shape=self.pts_voxel_encoder.grid_size,
        )
        self.out_channels = self.pts_middle_encoder.out_channels

    def forward(self, voxels: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        features = self.pts_voxel_encoder(voxels, num_points, coords)
        if isinstance(features, tuple):  # a dynamic encoder numbers its own pillars
            features, coords = features
        return self.pts_middle_encoder(features, coords, batch_size)
