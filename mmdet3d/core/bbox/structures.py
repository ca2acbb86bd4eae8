"""3D box geometry in the LiDAR frame.

Convention (stated once, used everywhere): a box is ``(x, y, z, dx, dy, dz, yaw[, vx, vy])``
with ``(x, y, z)`` the **gravity centre**, ``dx`` the length along the heading, ``dy`` the width,
``dz`` the height and ``yaw`` counter-clockwise from +x. Datasets convert other conventions at
their boundary (``bottom_to_gravity_center``).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "box_corners",
    "bev_corners",
    "points_in_boxes",
    "count_points_in_boxes",
    "rotation_z",
    "bottom_to_gravity_center",
    "gravity_to_bottom_center",
]


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def rotation_z(yaw: torch.Tensor) -> torch.Tensor:
    """(...,) yaw -> (..., 3, 3) rotation about +z."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).reshape(*yaw.shape, 3, 3)


def box_corners(boxes) -> torch.Tensor:
    """(N, >=7) boxes -> (N, 8, 3) corners.

    Order: bottom face (z-) then top face (z+), each counter-clockwise seen from above starting
    at the front-left corner (+dx/2, +dy/2).
    """
    boxes = _as_tensor(boxes)
    unit = boxes.new_tensor(
        [[0.5, 0.5, -0.5], [-0.5, 0.5, -0.5], [-0.5, -0.5, -0.5], [0.5, -0.5, -0.5],
         [0.5, 0.5, 0.5], [-0.5, 0.5, 0.5], [-0.5, -0.5, 0.5], [0.5, -0.5, 0.5]]
    )
    local = unit[None] * boxes[:, None, 3:6]  # (N, 8, 3)
    return local @ rotation_z(boxes[:, 6]).transpose(1, 2) + boxes[:, None, 0:3]


def bev_corners(boxes) -> torch.Tensor:
    """(N, >=7) boxes -> (N, 4, 2) footprint corners, counter-clockwise."""
    return box_corners(boxes)[:, :4, :2]


def points_in_boxes(points, boxes, eps: float = 0.0, chunk: int = 65536) -> torch.Tensor:
    """(P, >=3) points, (N, >=7) boxes -> (P, N) bool: point p lies inside box n.

    A point on a face counts as inside (closed box), as in nuScenes' ``points_in_box``. Points go
    ``chunk`` at a time so that the float64 (chunk, N, 3) intermediates stay bounded.
    """
    points, boxes = _as_tensor(points), _as_tensor(boxes)
    dtype = torch.float64
    b = boxes[:, :7].to(dtype)
    c, s = torch.cos(b[:, 6]), torch.sin(b[:, 6])
    half = b[:, 3:6] / 2 + eps
    inside = torch.zeros((points.shape[0], boxes.shape[0]), dtype=torch.bool, device=points.device)
    for start in range(0, points.shape[0], chunk):
        # Move points into each box's frame: rotate the offset by -yaw.
        offset = points[start:start + chunk, None, :3].to(dtype) - b[None, :, :3]  # (chunk, N, 3)
        local_x = offset[..., 0] * c + offset[..., 1] * s
        local_y = -offset[..., 0] * s + offset[..., 1] * c
        inside[start:start + chunk] = (
            (local_x.abs() <= half[:, 0]) & (local_y.abs() <= half[:, 1]) & (offset[..., 2].abs() <= half[:, 2])
        )
    return inside


def count_points_in_boxes(points, boxes, chunk: int = 65536) -> torch.Tensor:
    """(P, >=3), (N, >=7) -> (N,) int64 number of points inside each box."""
    return points_in_boxes(points, boxes, chunk=chunk).sum(0)


def bottom_to_gravity_center(boxes):
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[:, 2] = out[:, 2] + out[:, 5] / 2
    return out


def gravity_to_bottom_center(boxes):
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[:, 2] = out[:, 2] - out[:, 5] / 2
    return out
