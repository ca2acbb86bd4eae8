"""LiDAR-side augmentation and filters on ``points`` and ``gt_bboxes_3d``.

Augmentations move points and boxes together (boxes: centre, size, yaw and velocity) and
compose their transform into ``lidar_aug_matrix`` (4x4, ``point_aug = lidar_aug_matrix @
point``), which starts as the identity. Yaw is kept in ``[-pi, pi)``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from mmdet3d.datasets.builder import PIPELINES

__all__ = [
    "GlobalRotScaleTrans",
    "RandomFlip3D",
    "PointsRangeFilter",
    "ObjectRangeFilter",
    "ObjectNameFilter",
    "PointShuffle",
    "wrap_yaw",
]


def wrap_yaw(yaw: torch.Tensor) -> torch.Tensor:
    """Angles -> the same angles in ``[-pi, pi)``."""
    return torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi


def _compose_lidar_aug(results: dict, transform: np.ndarray) -> None:
    """``lidar_aug_matrix <- transform @ lidar_aug_matrix`` (identity when absent)."""
    current = np.asarray(results.get("lidar_aug_matrix", np.eye(4)), dtype=np.float64)
    results["lidar_aug_matrix"] = (transform @ current).astype(np.float32)


def _apply_transform(results: dict, transform: np.ndarray, yaw_fn, size_scale: float) -> None:
    """Points and boxes: ``p <- transform @ p`` (4x4: 3x3 linear part and translation), composed
    into ``lidar_aug_matrix``.

    Box centres move like points, sizes scale by ``size_scale``, yaw by ``yaw_fn``, and the
    velocity ``(vx, vy)`` by the top-left 2x2 of the linear part.
    """
    lin_t = torch.from_numpy(transform[:3, :3].T.astype(np.float32))
    shift = torch.from_numpy(transform[:3, 3].astype(np.float32))
    if "points" in results:
        points = results["points"].clone()
        points[:, :3] = torch.addmm(shift, points[:, :3], lin_t)
        results["points"] = points
    if "gt_bboxes_3d" in results:
        boxes = results["gt_bboxes_3d"].clone()
        boxes[:, :3] = torch.addmm(shift, boxes[:, :3], lin_t)
        boxes[:, 3:6] = boxes[:, 3:6] * size_scale
        boxes[:, 6] = wrap_yaw(yaw_fn(boxes[:, 6]))
        if boxes.shape[1] >= 9:
            boxes[:, 7:9] = boxes[:, 7:9] @ lin_t[:2, :2]
        results["gt_bboxes_3d"] = boxes
    _compose_lidar_aug(results, transform)


@PIPELINES.register_module()
class GlobalRotScaleTrans:
    """Rotate about +z by ``theta ~ U(rot_lim)`` (radians, counter-clockwise), translate by
    ``t ~ N(0, trans_lim^2)`` per axis, then scale by ``s ~ U(resize_lim)``:
    ``p_aug = s * (R(theta) @ p + t)``. Boxes: yaw + theta, sizes and velocity scaled by ``s``.
    With ``is_train=False`` nothing changes but ``lidar_aug_matrix`` is set (identity if absent).
    """

    def __init__(
        self,
        resize_lim: Sequence[float] = (1.0, 1.0),
        rot_lim: Sequence[float] = (0.0, 0.0),
        trans_lim: float = 0.0,
        is_train: bool = True,
    ):
        self.resize_lim = tuple(float(v) for v in resize_lim)
        self.rot_lim = tuple(float(v) for v in rot_lim)
        self.trans_lim = float(trans_lim)
        self.is_train = is_train

    def __call__(self, results: dict) -> dict:
        if not self.is_train:
            _compose_lidar_aug(results, np.eye(4))
            return results
        scale = np.random.uniform(*self.resize_lim)
        theta = np.random.uniform(*self.rot_lim)
        translation = np.random.normal(0.0, self.trans_lim, size=3) if self.trans_lim > 0 else np.zeros(3)
        c, s = math.cos(theta), math.sin(theta)
        transform = np.eye(4)
        transform[:3, :3] = scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        transform[:3, 3] = scale * translation
        _apply_transform(results, transform, lambda yaw: yaw + theta, scale)
        return results

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(resize_lim={self.resize_lim}, rot_lim={self.rot_lim}, "
                f"trans_lim={self.trans_lim}, is_train={self.is_train})")


@PIPELINES.register_module()
class RandomFlip3D:
    """Mirror the scene with probability ``flip_ratio`` per enabled axis.

    Horizontal: ``y -> -y``, ``yaw -> -yaw``, ``vy -> -vy``. Vertical: ``x -> -x``,
    ``yaw -> pi - yaw``, ``vx -> -vx``. Records ``pcd_horizontal_flip``/``pcd_vertical_flip``.
    """

    def __init__(self, flip_horizontal: bool = True, flip_vertical: bool = True, flip_ratio: float = 0.5):
        self.flip_horizontal = flip_horizontal
        self.flip_vertical = flip_vertical
        self.flip_ratio = flip_ratio

    def __call__(self, results: dict) -> dict:
        horizontal = bool(self.flip_horizontal and np.random.rand() < self.flip_ratio)
        vertical = bool(self.flip_vertical and np.random.rand() < self.flip_ratio)
        if horizontal:
            _apply_transform(results, np.diag([1.0, -1.0, 1.0, 1.0]), lambda yaw: -yaw, 1.0)
        if vertical:
            _apply_transform(results, np.diag([-1.0, 1.0, 1.0, 1.0]), lambda yaw: math.pi - yaw, 1.0)
        if not (horizontal or vertical):
            _compose_lidar_aug(results, np.eye(4))
        results["pcd_horizontal_flip"] = horizontal
        results["pcd_vertical_flip"] = vertical
        return results

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(flip_horizontal={self.flip_horizontal}, flip_vertical={self.flip_vertical}, "
                f"flip_ratio={self.flip_ratio})")


def _filter_objects(results: dict, keep: torch.Tensor) -> None:
    """Apply an ``(M,)`` bool mask to ``gt_bboxes_3d``, ``gt_labels_3d`` and ``gt_names``."""
    for key in ("gt_bboxes_3d", "gt_labels_3d"):
        if key in results:
            results[key] = results[key][keep]
    if "gt_names" in results:
        results["gt_names"] = np.asarray(results["gt_names"])[keep.numpy()]


class _RangeFilter:
    """A pipeline step holding a checked ``point_cloud_range`` ``[x_min, y_min, z_min, x_max, y_max, z_max]``."""

    def __init__(self, point_cloud_range: Sequence[float]):
        pcr = [float(v) for v in point_cloud_range]
        if len(pcr) != 6 or not all(lo < hi for lo, hi in zip(pcr[:3], pcr[3:])):
            raise ValueError(
                f"{type(self).__name__}: point_cloud_range must be [x_min, y_min, z_min, x_max, y_max, z_max], got {point_cloud_range}"
            )
        self.point_cloud_range = pcr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(point_cloud_range={self.point_cloud_range})"


@PIPELINES.register_module()
class PointsRangeFilter(_RangeFilter):
    """Keep points strictly inside ``point_cloud_range`` ``[x_min, y_min, z_min, x_max, y_max, z_max]``."""

    def __call__(self, results: dict) -> dict:
        points = results["points"]
        lo = points.new_tensor(self.point_cloud_range[:3])
        hi = points.new_tensor(self.point_cloud_range[3:])
        keep = ((points[:, :3] > lo) & (points[:, :3] < hi)).all(dim=1)
        results["points"] = points[keep]
        return results


@PIPELINES.register_module()
class ObjectRangeFilter(_RangeFilter):
    """Keep boxes whose BEV centre is strictly inside the x/y extent of ``point_cloud_range``."""

    def __call__(self, results: dict) -> dict:
        boxes = results["gt_bboxes_3d"]
        x_min, y_min, _, x_max, y_max, _ = self.point_cloud_range
        keep = (boxes[:, 0] > x_min) & (boxes[:, 0] < x_max) & (boxes[:, 1] > y_min) & (boxes[:, 1] < y_max)
        _filter_objects(results, keep)
        results["gt_bboxes_3d"][:, 6] = wrap_yaw(results["gt_bboxes_3d"][:, 6])
        return results


@PIPELINES.register_module()
class ObjectNameFilter:
    """Keep boxes whose label indexes ``classes`` (drops -1: names outside the configured classes)."""

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)

    def __call__(self, results: dict) -> dict:
        labels = results["gt_labels_3d"]
        _filter_objects(results, (labels >= 0) & (labels < len(self.classes)))
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(classes={self.classes})"


@PIPELINES.register_module()
class PointShuffle:
    """Random permutation of ``points`` (training: voxelisation keeps the first points per voxel)."""

    def __call__(self, results: dict) -> dict:
        results["points"] = results["points"][torch.from_numpy(np.random.permutation(len(results["points"])))]
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
