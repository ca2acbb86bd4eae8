"""Ray-box intersection and box corners shared by the camera renderer and the LiDAR, so both
see one geometry.

Boxes are ``(center (3,), half (3,), yaw)`` in the scene frame, rotated about +z only. Faces
are numbered ``2 * axis + (1 if the face looks towards +axis else 0)`` in the box frame.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ray_box", "face_normals", "box_corners_np", "UNIT_CORNERS"]

UNIT_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


def ray_box(origin, dx, dy, dz, center, half, yaw, with_face: bool = True):
    """Slab test of rays ``origin + t * d`` against one box.

    ``dx, dy, dz``: (...,) direction components in the scene frame (need not be unit).
    Returns ``t`` (...,) entry parameter (``inf`` where the ray misses or starts inside) and
    ``face`` (...,) int8 entry face (``None`` unless ``with_face``).
    """
    c, s = np.cos(yaw), np.sin(yaw)
    o = np.asarray(origin, dtype=np.float64) - center
    # Origin and directions in the box frame (rotation by -yaw about z).
    ox, oy, oz = c * o[0] + s * o[1], -s * o[0] + c * o[1], o[2]
    lx = c * dx + s * dy
    ly = -s * dx + c * dy
    with np.errstate(divide="ignore", invalid="ignore"):
        entries, exits = [], []
        for d, oc, h in ((lx, ox, half[0]), (ly, oy, half[1]), (dz, oz, half[2])):
            inv = 1.0 / d
            t1, t2 = (-h - oc) * inv, (h - oc) * inv
            entries.append(np.minimum(t1, t2))
            exits.append(np.maximum(t1, t2))
        t_near = np.maximum(np.maximum(entries[0], entries[1]), entries[2])
        t_far = np.minimum(np.minimum(exits[0], exits[1]), exits[2])
    hit = (t_near <= t_far) & (t_near > 0)
    t = np.where(hit, t_near, np.inf)
    if not with_face:
        return t, None
    axis = np.where(entries[0] >= entries[1], np.where(entries[0] >= entries[2], 0, 2),
                    np.where(entries[1] >= entries[2], 1, 2))
    d_axis = np.where(axis == 0, lx, np.where(axis == 1, ly, dz))
    face = (2 * axis + (d_axis < 0)).astype(np.int8)
    return t, face


def face_normals(yaw: float) -> np.ndarray:
    """(6, 3) outward unit normals of a box's faces in the scene frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    ex, ey, ez = np.array([c, s, 0.0]), np.array([-s, c, 0.0]), np.array([0.0, 0.0, 1.0])
    return np.stack([-ex, ex, -ey, ey, -ez, ez])


def box_corners_np(center, half, yaw) -> np.ndarray:
    """(M, 3), (M, 3), (M,) -> (M, 8, 3) box corners in the scene frame, in ``UNIT_CORNERS`` order."""
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    local = UNIT_CORNERS[None] * half[:, None, :]
    x = c * local[..., 0] - s * local[..., 1] + center[:, None, 0]
    y = s * local[..., 0] + c * local[..., 1] + center[:, None, 1]
    return np.stack([x, y, local[..., 2] + center[:, None, 2]], axis=-1)
