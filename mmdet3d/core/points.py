"""Reading LiDAR point files (``.pcd.bin``: float32 records, nuScenes LIDAR_TOP has 5 per point)."""
from __future__ import annotations

import os

import numpy as np

__all__ = ["load_points", "PointFileError"]


class PointFileError(ValueError):
    """A point file is missing or malformed; the message names the file."""


def load_points(path: str, num_features: int = 5) -> np.ndarray:
    """Read ``path`` as float32 records of ``num_features`` values -> (P, num_features)."""
    if not os.path.isfile(path):
        raise PointFileError(f"point file not found: {path}")
    size = os.path.getsize(path)
    record = 4 * num_features
    if size % record != 0:
        raise PointFileError(
            f"point file {path} is truncated or not {num_features} float32 values per point: "
            f"{size} bytes is not a multiple of {record}"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, num_features)
