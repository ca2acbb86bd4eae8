"""Read mmdetection3d 1.x info files (``metainfo`` + ``data_list``) into our in-memory info form.

mmdet3d 1.x stores 4x4 matrices (``lidar2ego``, ``ego2global``, per camera ``cam2ego`` and
``lidar2cam``) and 3x3 ``cam2img``; ``bbox_3d`` is already ``(x, y, z_gravity, l, w, h, yaw)`` in the
LiDAR frame and ``timestamp`` is in seconds. Our infos (docs/data_format.md) keep quaternions and
translations, 3x3 ``sensor2lidar`` rotations and integer microseconds.
"""
from __future__ import annotations

import os

import numpy as np

from mmdet3d.datasets.nuscenes_utils import matrix_to_pose
from mmdet3d.utils.data_files import load_trusted_pickle

__all__ = ["load_mmdet3d_v1_infos", "is_mmdet3d_v1_infos"]


def is_mmdet3d_v1_infos(data) -> bool:
    return isinstance(data, dict) and "data_list" in data


def _resolve(data_root: str, path: str, *subdirs: str) -> str:
    """Join a stored path with the root; mmdet3d 1.x often stores bare file names whose folder is
    the nuScenes one (``samples/CAM_FRONT``), so try those folders when the plain join is absent."""
    plain = os.path.join(data_root, path)
    if os.path.exists(plain):
        return plain
    for sub in subdirs:
        candidate = os.path.join(data_root, sub, os.path.basename(path))
        if os.path.exists(candidate):
            return candidate
    return plain


def _micros(seconds: float) -> int:
    return int(round(float(seconds) * 1e6))


def _pose_fields(prefix: str, matrix) -> dict:
    rotation, translation = matrix_to_pose(np.asarray(matrix, dtype=np.float64))
    return {f"{prefix}_rotation": rotation, f"{prefix}_translation": translation}


def _sensor2lidar(sensor2lidar: np.ndarray) -> dict:
    return {"sensor2lidar_rotation": sensor2lidar[:3, :3], "sensor2lidar_translation": sensor2lidar[:3, 3]}


def _camera(name: str, cam: dict, ego2global, timestamp: float, data_root: str) -> dict:
    lidar2cam = np.asarray(cam["lidar2cam"], dtype=np.float64)
    return {
        "data_path": _resolve(data_root, cam["img_path"], f"samples/{name}"),
        "type": name,
        "sample_data_token": cam.get("sample_data_token", ""),
        "timestamp": _micros(cam.get("timestamp", timestamp)),
        **_pose_fields("sensor2ego", cam["cam2ego"]),
        # The camera's own ego pose is not stored in 1.x infos; the LiDAR one is the closest.
        **_pose_fields("ego2global", ego2global),
        **_sensor2lidar(np.linalg.inv(lidar2cam)),
        "camera_intrinsics": np.asarray(cam["cam2img"], dtype=np.float64)[:3, :3],
    }


def _sweep(sweep: dict, data_root: str) -> dict:
    lidar = sweep["lidar_points"]
    return {
        "data_path": _resolve(data_root, lidar["lidar_path"], "sweeps/LIDAR_TOP", "samples/LIDAR_TOP"),
        "type": "LIDAR_TOP",
        "sample_data_token": sweep.get("sample_data_token", ""),
        "timestamp": _micros(sweep["timestamp"]),
        **_pose_fields("sensor2ego", lidar["lidar2ego"]),
        **_pose_fields("ego2global", sweep["ego2global"]),
        **_sensor2lidar(np.linalg.inv(np.asarray(sweep["lidar2sensor"], dtype=np.float64))),
    }


def _instances(instances: list[dict], label_names: dict[int, str], where: str) -> dict:
    boxes, names, velos, n_lidar, n_radar, valid = [], [], [], [], [], []
    for i, inst in enumerate(instances):
        label = int(inst["bbox_label_3d"])
        if label == -1:  # a category outside the detection classes, as the devkit's eval drops
            continue
        if label not in label_names:
            raise ValueError(f"{where}: instance {i} has bbox_label_3d={label}, not in metainfo['categories']")
        boxes.append(np.asarray(inst["bbox_3d"], dtype=np.float64)[:7])
        names.append(label_names[label])
        velos.append(np.asarray(inst.get("velocity", [np.nan, np.nan]), dtype=np.float64)[:2])
        n_lidar.append(int(inst.get("num_lidar_pts", 0)))
        n_radar.append(int(inst.get("num_radar_pts", 0)))
        valid.append(bool(inst.get("bbox_3d_isvalid", n_lidar[-1] + n_radar[-1] > 0)))
    return {
        "gt_boxes": np.array(boxes, dtype=np.float32).reshape(-1, 7),
        "gt_names": np.array(names, dtype=str).reshape(-1),
        "gt_velocity": np.array(velos, dtype=np.float32).reshape(-1, 2),
        "num_lidar_pts": np.array(n_lidar, dtype=np.int64),
        "num_radar_pts": np.array(n_radar, dtype=np.int64),
        "valid_flag": np.array(valid, dtype=bool),
        "gt_attrs": np.array([""] * len(boxes), dtype=str),
    }


def convert_v1_info(entry: dict, label_names: dict[int, str], data_root: str) -> dict:
    """One ``data_list`` entry -> one info dict of docs/data_format.md (absolute paths)."""
    token = entry.get("token", str(entry.get("sample_idx", "")))
    lidar = entry["lidar_points"]
    ego2global = np.asarray(entry["ego2global"], dtype=np.float64)
    info = {
        "token": token,
        "scene_token": entry.get("scene_token", ""),
        "timestamp": _micros(entry["timestamp"]),
        "location": entry.get("location", ""),
        "lidar_path": _resolve(data_root, lidar["lidar_path"], "samples/LIDAR_TOP"),
        **_pose_fields("lidar2ego", lidar["lidar2ego"]),
        **_pose_fields("ego2global", ego2global),
        "sweeps": [_sweep(s, data_root) for s in entry.get("lidar_sweeps", [])],
        "cams": {name: _camera(name, cam, ego2global, entry["timestamp"], data_root) for name, cam in entry.get("images", {}).items()},
    }
    info.update(_instances(entry.get("instances", []), label_names, where=f"sample {token}"))
    return info


def load_mmdet3d_v1_infos(pkl_path: str, data_root: str | None = None) -> list[dict]:
    """Read an mmdet3d 1.x info pkl -> list of info dicts (paths joined with ``data_root``,
    by default the pkl's folder). The pkl is trusted input (``load_trusted_pickle``)."""
    data = load_trusted_pickle(pkl_path)
    if not is_mmdet3d_v1_infos(data):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{pkl_path} is not an mmdet3d 1.x info file: expected a 'data_list' key, found {keys}")
    return convert_v1_data(data, pkl_path, data_root)


def convert_v1_data(data: dict, pkl_path: str, data_root: str | None = None) -> list[dict]:
    """The loaded ``{"metainfo", "data_list"}`` dict of ``pkl_path`` -> list of info dicts."""
    # Absolute, so that the dataset's join with its (possibly relative) root leaves the paths as they are.
    data_root = os.path.abspath(os.path.dirname(pkl_path) if data_root is None else data_root)
    metainfo = data.get("metainfo", {})
    categories = metainfo.get("categories")
    if not isinstance(categories, dict):
        raise ValueError(f"{pkl_path}: metainfo['categories'] must map class name -> label, got {categories!r}")
    label_names = {int(v): k for k, v in categories.items()}
    return [convert_v1_info(entry, label_names, data_root) for entry in data["data_list"]]
