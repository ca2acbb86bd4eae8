"""The nuScenes sensor rig: six cameras and LIDAR_TOP, calibration as recorded by nuScenes.

Numbers are the calibrated_sensor records of log n015-2018-07-24-11-22-45+0800 (the keyframe in
``shared/data/nuscenes_keyframe``): rotations are sensor->ego quaternions ``[w, x, y, z]``,
translations sensor->ego in metres, intrinsics ``(fx, fy, cx, cy)`` for 1600x900 images.
Note the real LIDAR_TOP frame: x points to the ego's right, y forward, z up.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "CAMERA_CHANNELS",
    "LIDAR_CHANNEL",
    "CALIBRATION",
    "NUSCENES_IMAGE_SIZE",
    "quaternion_to_matrix",
    "yaw_to_quaternion",
    "quaternion_to_yaw",
    "pose_matrix",
    "camera_intrinsic",
    "sensor2ego",
]

CAMERA_CHANNELS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LIDAR_CHANNEL = "LIDAR_TOP"
NUSCENES_IMAGE_SIZE = (1600, 900)  # (W, H) of the intrinsics below

CALIBRATION: dict[str, dict] = {
    "CAM_FRONT": dict(
        rotation=[0.499801555028, -0.503031616203, 0.499779797608, -0.497370827095],
        translation=[1.7007912397, 0.015945632, 1.5109575987],
        intrinsic=(1266.4172030466, 1266.4172030466, 816.2670197448, 491.5070657929),
    ),
    "CAM_FRONT_RIGHT": dict(
        rotation=[0.206034788508, -0.202694052305, 0.682450780382, -0.671361076841],
        translation=[1.5508477688, -0.4934048057, 1.4957480431],
        intrinsic=(1260.8474446005, 1260.8474446005, 807.9682445256, 495.3344268742),
    ),
    "CAM_FRONT_LEFT": dict(
        rotation=[0.675726502467, -0.673626650209, 0.212140144345, -0.211228270452],
        translation=[1.5238779783, 0.49463135, 1.5093282461],
        intrinsic=(1272.5979470598, 1272.5979470598, 826.6154927354, 479.7516538636),
    ),
    "CAM_BACK": dict(
        rotation=[0.503787279468, -0.497402495526, -0.494185028845, 0.504549609601],
        translation=[0.0283260308, 0.0034513676, 1.5791034698],
        intrinsic=(809.2209905677, 809.2209905677, 829.219600326, 481.7784238451),
    ),
    "CAM_BACK_LEFT": dict(
        rotation=[0.692418553953, -0.703161940002, -0.11648343245, 0.112033178658],
        translation=[1.0356910229, 0.4847950339, 1.5909701586],
        intrinsic=(1256.7414812095, 1256.7414812095, 792.112574076, 492.7757465151),
    ),
    "CAM_BACK_RIGHT": dict(
        rotation=[0.122809803275, -0.132400841548, -0.700430580806, 0.690496043907],
        translation=[1.0148781538, -0.4805682302, 1.5623954535],
        intrinsic=(1259.5137405847, 1259.5137405847, 807.2529053839, 501.1957988492),
    ),
    "LIDAR_TOP": dict(
        rotation=[0.707795516282, -0.006492242208, 0.010646214411, -0.706307304236],
        translation=[0.9437130094, 0.0, 1.8402299881],
        intrinsic=None,
    ),
}


def quaternion_to_matrix(q) -> np.ndarray:
    """[w, x, y, z] (normalised here) -> (3, 3) rotation matrix, float64."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def yaw_to_quaternion(yaw: float) -> list[float]:
    """Rotation of ``yaw`` radians about +z as [w, x, y, z]."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def quaternion_to_yaw(q) -> float:
    """Heading of the rotated +x axis, counter-clockwise from +x."""
    r = quaternion_to_matrix(q)
    return float(np.arctan2(r[1, 0], r[0, 0]))


def pose_matrix(rotation, translation) -> np.ndarray:
    """Quaternion [w, x, y, z] and translation (3,) -> (4, 4) float64 transform."""
    m = np.eye(4)
    m[:3, :3] = quaternion_to_matrix(rotation)
    m[:3, 3] = translation
    return m


def camera_intrinsic(channel: str, image_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) K of ``channel`` for images of ``image_size`` = (W, H), scaled from 1600x900."""
    if channel not in CAMERA_CHANNELS:
        raise KeyError(f"unknown camera channel {channel!r}; expected one of {CAMERA_CHANNELS}")
    fx, fy, cx, cy = CALIBRATION[channel]["intrinsic"]
    sx = image_size[0] / NUSCENES_IMAGE_SIZE[0]
    sy = image_size[1] / NUSCENES_IMAGE_SIZE[1]
    return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


def sensor2ego(channel: str) -> np.ndarray:
    """(4, 4) sensor->ego transform of ``channel``."""
    cal = CALIBRATION[channel]
    return pose_matrix(cal["rotation"], cal["translation"])
