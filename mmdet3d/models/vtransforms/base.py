"""Lift-splat view transform: frustum geometry, depth distribution, BEV pooling.

Conventions (stated once, shared by the depth targets):

- Feature cell ``(h, w)`` of an ``fH x fW`` map over an ``iH x iW`` (augmented) image sits at the
  centre of the pixels it covers, with integer pixel centres: ``u = (w + 0.5) * iW / fW - 0.5``,
  ``v = (h + 0.5) * iH / fH - 0.5``. A point projected at pixel ``(u, v)`` falls in cell
  ``floor((u + 0.5) * fW / iW)``.
- ``dbound = [min, max, step]`` gives ``D = round((max - min) / step)`` depth bins; bin ``i``
  covers ``[min + i * step, min + (i + 1) * step)`` and its depth is the centre
  ``min + (i + 0.5) * step`` (``depth_bin_centers``).
- ``img_aug_matrix`` acts on ``(u, v, d, 1)`` (BEVFusion: image rotation/scale/crop in the top-left
  2x2 block and ``[:2, 3]``, depth untouched); ``lidar_aug_matrix`` maps LiDAR points to the
  augmented LiDAR frame in which the BEV grid lives.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mmdet3d.models.layers import conv_bn_relu
from mmdet3d.ops.bev_pool import BEVPoolGeometry, bev_cell_index, bev_grid, bev_pool

__all__ = ["BaseTransform", "PoolStructureCache", "depth_bin_centers", "share_pool_structures"]


def depth_bin_centers(dbound: Sequence[float]) -> torch.Tensor:
    """``[min, max, step]`` -> (D,) float32 bin centres ``min + (i + 0.5) * step``."""
    lo, hi, step = (float(v) for v in dbound)
    num_bins = int(round((hi - lo) / step))
    return lo + (torch.arange(num_bins, dtype=torch.float32) + 0.5) * step


class PoolStructureCache:
    """The last splat structure a lift built, with the camera and augmentation matrices it was built
    from; several lifts with the same frustum and grid (``BaseTransform.geometry_key``) may hold one
    (``share_pool_structures``: a distiller's teacher reuses the structure its student just built)."""

    def __init__(self):
        self.entry: tuple[tuple, list[torch.Tensor], BEVPoolGeometry] | None = None

    def lookup(self, key: tuple, matrices: list[torch.Tensor]) -> BEVPoolGeometry | None:
        if self.entry is None or self.entry[0] != key:
            return None
        _, cached, structure = self.entry
        same = all(a.shape == b.shape and a.device == b.device and a.dtype == b.dtype and torch.equal(a, b)
                   for a, b in zip(cached, matrices))
        return structure if same else None

    def store(self, key: tuple, matrices: list[torch.Tensor], structure: BEVPoolGeometry) -> None:
        self.entry = (key, [m.detach().clone() for m in matrices], structure)


def share_pool_structures(*modules: nn.Module) -> int:
    """Give every ``BaseTransform`` below ``modules`` with the same ``geometry_key`` one
    ``PoolStructureCache``; returns how many lifts now share another's structure."""
    caches: dict[tuple, PoolStructureCache] = {}
    shared = 0
    for module in modules:
        for lift in module.modules():
            if isinstance(lift, BaseTransform):
                cache = caches.setdefault(lift.geometry_key, lift.structure_cache)
                shared += cache is not lift.structure_cache
                lift.structure_cache = cache
    return shared


class BaseTransform(nn.Module):
    """Lift image features to a frustum with a depth distribution and splat it into BEV.

    Subclasses implement ``get_depth_and_context(img_feats, batch)`` returning depth logits
    (B, N, D, fH, fW) and context features (B, N, C, fH, fW). ``forward(img_feats, batch)`` returns
    ``(bev (B, out_channels, X', Y'), {"depth_logits": (B, N, D, fH, fW)})`` with ``(X', Y') = bev_size``,
    ``X' = X / downsample`` (rounded up).

    The sparse splat structure (index arrays only, no gradient) is cached and reused while the camera
    matrices and ``lidar_aug_matrix`` keep their values (every eval call of a fixed rig; in training,
    each new batch rebuilds it), in ``structure_cache``, which lifts of one geometry may share.
    ``reference_pool=True`` selects the materialising reference ``bev_pool``.
    """

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
        super().__init__()
        self.in_channels = in_channels
        self.context_channels = out_channels
        self.image_size = tuple(int(s) for s in image_size)
        self.feature_size = tuple(int(s) for s in feature_size)
        self.xbound, self.ybound, self.zbound = list(xbound), list(ybound), list(zbound)
        self.dbound = list(dbound)
        self.reference_pool = reference_pool
        _, _, (nx, ny, nz) = bev_grid(xbound, ybound, zbound)
        self.grid_size = (nx, ny, nz)
        self.bev_size = (-(-nx // downsample), -(-ny // downsample))  # (X', Y') of the output map
        self.register_buffer("frustum", self.create_frustum(), persistent=False)
        self.num_depth_bins = self.frustum.shape[0]
        pooled_channels = out_channels * nz
        if downsample > 1:
            self.downsample = nn.Sequential(
                conv_bn_relu(pooled_channels, out_channels, 3),
                conv_bn_relu(out_channels, out_channels, 3, stride=downsample),
                conv_bn_relu(out_channels, out_channels, 3),
            )
            self.out_channels = out_channels
        else:
            self.downsample = nn.Identity()
            self.out_channels = pooled_channels
        self.structure_cache = PoolStructureCache()
        # everything the splat structure depends on besides the batch's matrices
        self.geometry_key = (self.image_size, self.feature_size, tuple(self.dbound), tuple(self.xbound),
                             tuple(self.ybound), tuple(self.zbound))

    def create_frustum(self) -> torch.Tensor:
        """(D, fH, fW, 3) frustum points ``(u, v, d)`` in augmented-image pixels and metres."""
        image_h, image_w = self.image_size
        feat_h, feat_w = self.feature_size
        depths = depth_bin_centers(self.dbound)
        us = (torch.arange(feat_w, dtype=torch.float32) + 0.5) * (image_w / feat_w) - 0.5
        vs = (torch.arange(feat_h, dtype=torch.float32) + 0.5) * (image_h / feat_h) - 0.5
        d, v, u = torch.meshgrid(depths, vs, us, indexing="ij")
        return torch.stack([u, v, d], dim=-1)

    def get_geometry(self, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix) -> torch.Tensor:
        """(B, N, 4, 4) x3 and (B, 4, 4) -> (B, N, D, fH, fW, 3) xyz in the augmented LiDAR frame.

        Undo the image augmentation, unproject ``(u * d, v * d, d)`` with the intrinsics, move to
        the LiDAR frame and apply the LiDAR augmentation.
        """
        batch_size, num_cams = camera2lidar.shape[:2]
        dtype = camera2lidar.dtype
        frustum = self.frustum.to(dtype)
        points = torch.cat([frustum, torch.ones_like(frustum[..., :1])], dim=-1).reshape(-1, 4)  # (D*fH*fW, 4)
        # (B, N, 4, 4) @ (4, D*fH*fW) -> (B, N, D*fH*fW, 4): pixels of the original image
        raw = (torch.linalg.inv(img_aug_matrix) @ points.t()).transpose(-1, -2)
        depth = raw[..., 2:3]
        cam_points = torch.cat([raw[..., :2] * depth, depth, torch.ones_like(depth)], dim=-1)
        to_lidar = lidar_aug_matrix[:, None] @ camera2lidar @ torch.linalg.inv(camera_intrinsics)  # (B, N, 4, 4)
        lidar = (to_lidar @ cam_points.transpose(-1, -2)).transpose(-1, -2)[..., :3]
        return lidar.reshape(batch_size, num_cams, *self.frustum.shape)

    @staticmethod
    def geometry_matrices(batch: dict) -> list[torch.Tensor]:
        """The arguments of ``get_geometry`` taken from a batch."""
        return [batch["camera2lidar"], batch["camera_intrinsics"], batch["img_aug_matrix"], batch["lidar_aug_matrix"]]

    def frustum_bev_masks(self, batch: dict) -> torch.Tensor:
        """(B, N, X, Y) bool: the BEV cells reached by some frustum point of camera n (its view)."""
        geometry = self.get_geometry(*self.geometry_matrices(batch))
        batch_size, num_cams = geometry.shape[:2]
        nx, ny, nz = self.grid_size
        cell = bev_cell_index(geometry, self.xbound, self.ybound, self.zbound).flatten(2)  # (B, N, D*fH*fW)
        cell = torch.where(cell >= 0, cell, torch.full_like(cell, nz * nx * ny))  # outside -> spare slot
        hit = torch.zeros(batch_size, num_cams, nz * nx * ny + 1, dtype=torch.bool, device=cell.device)
        hit.scatter_(2, cell, True)
        return hit[..., :-1].view(batch_size, num_cams, nz, nx, ny).any(dim=2)

    def get_depth_and_context(self, img_feats: torch.Tensor, batch: dict):
        raise NotImplementedError

    def split_depth_context(self, out: torch.Tensor, batch_size: int, num_cams: int):
        """Depth-net output (B*N, D + C, fH, fW) -> depth logits (B, N, D, fH, fW), context (B, N, C, fH, fW)."""
        out = out.view(batch_size, num_cams, *out.shape[1:])  # (B*N, D + C, fH, fW) -> (B, N, D + C, fH, fW)
        return out[:, :, : self.num_depth_bins], out[:, :, self.num_depth_bins :]

    def _pool_structure(self, batch: dict) -> BEVPoolGeometry:
        matrices = self.geometry_matrices(batch)
        structure = self.structure_cache.lookup(self.geometry_key, matrices)
        if structure is None:
            geometry = self.get_geometry(*matrices)
            structure = BEVPoolGeometry(geometry.detach(), self.xbound, self.ybound, self.zbound)
            self.structure_cache.store(self.geometry_key, matrices, structure)
        return structure

    def splat(self, depth_probs: torch.Tensor, context: torch.Tensor, batch: dict) -> torch.Tensor:
        """depth_probs (B, N, D, fH, fW), context (B, N, C, fH, fW) -> (B, Z*C, X, Y)."""
        if self.reference_pool:
            geometry = self.get_geometry(*self.geometry_matrices(batch))
            return bev_pool(depth_probs, context, geometry, self.xbound, self.ybound, self.zbound, reference=True)
        return self._pool_structure(batch).pool(depth_probs, context)

    def forward(self, img_feats: torch.Tensor, batch: dict):
        """img_feats (B, N, C_in, fH, fW), batch (see docs/data_format.md) -> (bev, {"depth_logits"})."""
        depth_logits, context = self.get_depth_and_context(img_feats, batch)
        bev = self.splat(depth_logits.softmax(dim=2), context, batch)
        return self.downsample(bev), {"depth_logits": depth_logits}
