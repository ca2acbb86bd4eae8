"""nuScenes constants and pose helpers shared by the info converters, the dataset and evaluation."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pyquaternion import Quaternion

__all__ = [
    "NUSCENES_CLASSES",
    "CAMERA_NAMES",
    "EVAL_SPLITS",
    "TRAIN_VAL_SPLITS",
    "pose_matrix",
    "matrix_to_pose",
    "check_version",
]

# The ten detection classes in devkit order (docs/data_format.md).
NUSCENES_CLASSES = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)

# BEVFusion's camera order; the info's ``cams`` dict keeps it.
CAMERA_NAMES = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")

# version -> (devkit split of the training info, devkit split of the validation info).
TRAIN_VAL_SPLITS = {
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-trainval": ("train", "val"),
    "v1.0-test": (None, "test"),
}

# version -> devkit split that ``DetectionEval`` scores.
EVAL_SPLITS = {"v1.0-mini": "mini_val", "v1.0-trainval": "val", "v1.0-test": "test"}


def check_version(version: str) -> str:
    if version not in TRAIN_VAL_SPLITS:
        raise ValueError(f"unknown nuScenes version {version!r}; expected one of {sorted(TRAIN_VAL_SPLITS)}")
    return version


def pose_matrix(rotation: Sequence[float] | np.ndarray, translation: Sequence[float]) -> np.ndarray:
    """Rotation (quaternion ``[w, x, y, z]`` or 3x3 matrix) and translation (3,) -> (4, 4) float64."""
    rotation = np.asarray(rotation, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = Quaternion(rotation).rotation_matrix if rotation.shape == (4,) else rotation
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def matrix_to_pose(matrix: np.ndarray, atol: float = 1e-5) -> tuple[list[float], list[float]]:
    """(4, 4) rigid transform -> (quaternion ``[w, x, y, z]``, translation (3,)) as lists.

    ``atol`` tolerates rotation matrices stored in float32, which are orthonormal only to ~1e-7.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    quat = Quaternion(matrix=matrix[:3, :3], atol=atol)
    return list(quat.elements), list(matrix[:3, 3])
