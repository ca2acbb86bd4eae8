"""LiDAR points into camera images (pixel convention of ``datasets/pipelines/image_transforms``).

``lidar2image @ [x, y, z, 1]`` gives ``[u*d, v*d, d, 1]`` with ``d`` the camera-frame depth;
``img_aug_matrix @ [u, v, d, 1]`` moves the pixel into the augmented image. Shared by the depth
targets of the data pipeline and by the camera renders of ``core/visualize``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["MIN_DEPTH", "project_points"]

MIN_DEPTH = 1e-3  # points at or behind the image plane have no pixel


def project_points(points_xyz: np.ndarray, lidar2image: np.ndarray, img_aug_matrix: np.ndarray) -> np.ndarray:
    """``(P, 3)`` LiDAR points, ``(N, 4, 4)`` x2 -> ``(N, P, 3)`` ``(u', v', d)`` in the augmented images.

    Computed in the dtype of ``points_xyz`` (float32 keeps pixels to ~1e-4 px at 1600 px).
    """
    dtype = points_xyz.dtype
    num_cams = len(lidar2image)
    homog = np.concatenate([points_xyz, np.ones((len(points_xyz), 1), dtype)], axis=1)  # (P, 4)
    # One 2D matmul for all cameras: (P, 4) @ (4, N*4) -> (P, N, 4) rows (u*d, v*d, d, 1).
    cam = (homog @ lidar2image.astype(dtype).reshape(num_cams * 4, 4).T).reshape(-1, num_cams, 4)
    depth = cam[..., 2]
    safe = np.where(np.abs(depth) < MIN_DEPTH, MIN_DEPTH, depth)
    u, v = cam[..., 0] / safe, cam[..., 1] / safe
    a = img_aug_matrix.astype(dtype)[:, :2]  # (N, 2, 4): rows of u' and v' over (u, v, d, 1)
    u_aug = a[:, 0, 0] * u + a[:, 0, 1] * v + a[:, 0, 2] * depth + a[:, 0, 3]  # (P, N)
    v_aug = a[:, 1, 0] * u + a[:, 1, 1] * v + a[:, 1, 2] * depth + a[:, 1, 3]
    return np.stack([u_aug.T, v_aug.T, depth.T], axis=-1)
