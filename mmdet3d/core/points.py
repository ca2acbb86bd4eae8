"""Reading LiDAR point files (``.pcd.bin``: float32 records, nuScenes LIDAR_TOP has 5 per point)."""
from __future__ import annotations

import os

import numpy as np

from mmdet3d.utils.data_files import DataFileError

__all__ = ["load_points", "PointFileError"]


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
