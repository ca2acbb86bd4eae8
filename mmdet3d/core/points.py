"""Reading LiDAR point files (``.pcd.bin``: float32 records, nuScenes LIDAR_TOP has 5 per point) and
the BEV cells they occupy."""
from __future__ import annotations

import os

import numpy as np
import torch

from mmdet3d.utils.data_files import DataFileError

__all__ = ["load_points", "PointFileError", "bev_occupancy"]


class PointFileError(DataFileError):
    """A point file is missing, empty, malformed or holds nan/inf; the message names the file."""


def load_points(path: str, num_features: int = 5, allow_empty: bool = False) -> np.ndarray:
    """Read ``path`` as float32 records of ``num_features`` values -> (P, num_features).

    A zero-byte file is an error unless ``allow_empty`` (GT-database objects may hold no point);
    so are a size that is not a whole number of records and a non-finite value.
    """
    if not os.path.isfile(path):
        raise PointFileError(f"point file not found: {path}")
    size = os.path.getsize(path)
    record = 4 * num_features
    if size == 0 and not allow_empty:
        raise PointFileError(f"point file {path} is empty (0 bytes)")
    if size % record != 0:
        raise PointFileError(
            f"point file {path} is truncated or not {num_features} float32 values per point: "
            f"{size} bytes is not a multiple of {record}"
        )
    points = np.fromfile(path, dtype=np.float32).reshape(-1, num_features)
    check_finite_points(points, path)
    return points


def check_finite_points(points: np.ndarray, path: str) -> None:
    """``PointFileError`` naming ``path`` and the first bad point when ``points`` holds nan/inf."""
    finite = np.isfinite(points)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise PointFileError(f"point file {path} holds non-finite values (nan/inf) in {len(rows)} of {len(points)} points "
                             f"(first: point {rows[0]})")


def bev_occupancy(points: torch.Tensor, bev_range, grid_size) -> torch.Tensor:
    """(P, >=2) points -> (X, Y) float mask, 1 where a cell of the ``grid_size = (X, Y)`` grid over
    ``bev_range = (x_min, y_min, x_max, y_max)`` holds a point (cell ``i`` spans
    ``[min + i * cell, min + (i + 1) * cell)``); points off the grid are ignored."""
    x_min, y_min, x_max, y_max = (float(v) for v in bev_range)
    num_x, num_y = (int(v) for v in grid_size)
    xy = points[:, :2].double()
    ix = torch.floor((xy[:, 0] - x_min) / (x_max - x_min) * num_x).long()
    iy = torch.floor((xy[:, 1] - y_min) / (y_max - y_min) * num_y).long()
    inside = (ix >= 0) & (ix < num_x) & (iy >= 0) & (iy < num_y)
    mask = torch.zeros(num_x, num_y, dtype=torch.float32, device=points.device)
    mask[ix[inside], iy[inside]] = 1.0
    return mask
