"""Sparse LiDAR depth and foreground targets per camera (DESIGN.md 5.2).

Keyframe points (time lag 0) are taken back to the un-augmented LiDAR frame with
``inv(lidar_aug_matrix)``, projected with ``lidar2image`` and moved into the augmented image with
``img_aug_matrix`` (pixel convention in ``image_transforms``: integer coordinates are pixel
centres). Pixel ``(u, v)`` falls in cell ``(floor((v + 0.5) / stride), floor((u + 0.5) / stride))``
of the ``(H // stride, W // stride)`` grid, the cell whose centre the view transform's frustum
places at ``(w + 0.5) * stride - 0.5``; each cell
keeps its nearest point (smallest camera-frame depth, the earlier point on ties).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mmdet3d.core.bbox import points_in_boxes
from mmdet3d.core.projection import MIN_DEPTH, project_points
from mmdet3d.datasets.builder import PIPELINES

__all__ = ["DepthTargets", "project_points", "first_box_index", "nearest_point_per_cell", "nearest_point_per_cell_reference"]


def nearest_point_per_cell(cell: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """``(K,)`` cell ids, ``(K,)`` depths -> indices of the nearest entry of each occupied cell."""
    order = np.lexsort((depth, cell))  # by cell, then depth; stable, so ties keep the lower index
    sorted_cells = cell[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_cells[1:] != sorted_cells[:-1]
    return order[first]


def nearest_point_per_cell_reference(cell: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Slow reference of ``nearest_point_per_cell``: one Python pass keeping the nearest per cell."""
    best: dict[int, int] = {}
    for i, (c, d) in enumerate(zip(cell.tolist(), depth.tolist())):
        if c not in best or d < depth[best[c]]:
            best[c] = i
    return np.array(sorted(best.values(), key=lambda i: cell[i]), dtype=np.int64)


def first_box_index(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(K, 3)`` points, ``(M, >=7)`` boxes -> ``(K,)`` int64 index of the first box holding each
    point, -1 for none. Only points within a box's circumscribed BEV circle are tested exactly."""
    centre_dist2 = (points[:, None, 0] - boxes[None, :, 0]) ** 2 + (points[:, None, 1] - boxes[None, :, 1]) ** 2  # (K, M)
    near = (centre_dist2 <= (boxes[:, 3] ** 2 + boxes[:, 4] ** 2) / 4 + 1e-3).any(1)
    index = torch.full((len(points),), -1, dtype=torch.int64)
    if near.any():
        inside = points_in_boxes(points[near], boxes)  # (K_near, M)
        index[near] = torch.where(inside.any(1), inside.to(torch.uint8).argmax(1), -1)
    return index


def _image_hw(images) -> tuple[int, int]:
    if isinstance(images, torch.Tensor):  # (N, 3, H, W) after ImageNormalize
        return int(images.shape[-2]), int(images.shape[-1])
    shapes = {np.asarray(im).shape[:2] for im in images}
    if len(shapes) != 1:
        raise ValueError(f"DepthTargets: camera images differ in size {sorted(shapes)}; resize them first (ImageAug3D)")
    return shapes.pop()


@PIPELINES.register_module()
class DepthTargets:
    """-> ``depth_map`` (N, h, w) float32 (camera-frame depth in metres, 0 where no point) and
    ``fg_map`` (N, h, w) int64 (``k + 1`` if the cell's point lies in ``gt_bboxes_3d[k]``, else 0),
    ``h, w = H // downsample, W // downsample`` of the augmented images.

    ``dbound = (d_min, d_max, step)`` keeps only depths in ``[d_min, d_max)``. Needs ``points``,
    ``img``, ``lidar2image``; ``img_aug_matrix``/``lidar_aug_matrix`` default to the identity.
    """

    def __init__(self, downsample: int = 8, dbound: Sequence[float] | None = None):
        if downsample < 1:
            raise ValueError(f"DepthTargets: downsample must be >= 1, got {downsample}")
        self.downsample = int(downsample)
        self.dbound = None if dbound is None else tuple(float(v) for v in dbound)

    def __call__(self, results: dict) -> dict:
        for key in ("points", "img", "lidar2image"):
            if key not in results:
                raise KeyError(f"DepthTargets: results of sample {results.get('token', '?')} have no {key!r}")
        height, width = _image_hw(results["img"])
        lidar2image = np.asarray(results["lidar2image"], dtype=np.float64)
        num_cams = lidar2image.shape[0]
        img_aug = np.asarray(results.get("img_aug_matrix", np.broadcast_to(np.eye(4), (num_cams, 4, 4))), dtype=np.float64)
        lidar_aug = np.asarray(results.get("lidar_aug_matrix", np.eye(4)), dtype=np.float64)
        h, w = height // self.downsample, width // self.downsample

        points = results["points"]
        keyframe = points[points[:, 4] == 0] if points.shape[1] > 4 else points
        # Points are augmented, the cameras saw the scene before: fold inv(lidar_aug) into lidar2image.
        lidar2image_aug = (lidar2image @ np.linalg.inv(lidar_aug)).astype(np.float32)
        uvd = project_points(keyframe[:, :3].numpy(), lidar2image_aug, img_aug)  # (N, P, 3)
        # Shift to pixel-edge coordinates so that cell = floor(coordinate / stride).
        u, v, d = uvd[..., 0] + 0.5, uvd[..., 1] + 0.5, uvd[..., 2]
        valid = (d > MIN_DEPTH) & (u >= 0) & (v >= 0) & (u < w * self.downsample) & (v < h * self.downsample)
        if self.dbound is not None:
            valid &= (d >= self.dbound[0]) & (d < self.dbound[1])
        cam_idx, point_idx = np.nonzero(valid)
        cell = cam_idx * (h * w) + (v[valid] // self.downsample).astype(np.int64) * w + (u[valid] // self.downsample).astype(np.int64)
        chosen = nearest_point_per_cell(cell, d[valid])

        depth_map = np.zeros(num_cams * h * w, dtype=np.float32)
        fg_map = np.zeros(num_cams * h * w, dtype=np.int64)
        depth_map[cell[chosen]] = d[valid][chosen]
        boxes = results.get("gt_bboxes_3d")
        if boxes is not None and len(boxes) > 0 and len(chosen) > 0:
            fg_map[cell[chosen]] = first_box_index(keyframe[point_idx[chosen], :3], boxes).numpy() + 1
        results["depth_map"] = torch.from_numpy(depth_map.reshape(num_cams, h, w))
        results["fg_map"] = torch.from_numpy(fg_map.reshape(num_cams, h, w))
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(downsample={self.downsample}, dbound={self.dbound})"
