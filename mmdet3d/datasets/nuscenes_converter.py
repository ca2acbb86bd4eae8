"""Write BEVFusion-style info files (``{prefix}_infos_{train,val}.pkl``) from a nuScenes-format dataset.

The same code reads real nuScenes and the embedded synthetic dataset: everything goes through
``nuscenes.NuScenes`` and the devkit's scene splits. Field names and frames follow
docs/data_format.md; boxes are gravity-centre ``(x, y, z, l, w, h, yaw)`` in the keyframe LiDAR frame.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
from tqdm import tqdm

from mmdet3d.datasets.nuscenes_utils import CAMERA_NAMES, TRAIN_VAL_SPLITS, check_version, pose_matrix

__all__ = ["create_nuscenes_infos", "create_infos", "check_writable", "load_nuscenes", "obtain_sensor2lidar"]

_TABLES = (
    "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
    "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map",
)


def load_nuscenes(root_path: str, version: str, verbose: bool = False):
    """``nuscenes.NuScenes(version, root_path)`` after checking the folder and its tables exist."""
    from nuscenes import NuScenes

    check_version(version)
    if not os.path.isdir(root_path):
        raise FileNotFoundError(f"nuScenes root folder not found: {root_path}")
    table_root = os.path.join(root_path, version)
    if not os.path.isdir(table_root):
        raise FileNotFoundError(f"nuScenes tables for version {version!r} not found: {table_root} does not exist")
    missing = [t + ".json" for t in _TABLES if not os.path.isfile(os.path.join(table_root, t + ".json"))]
    if missing:
        raise FileNotFoundError(f"nuScenes tables missing in {table_root}: {', '.join(missing)}")
    return NuScenes(version=version, dataroot=root_path, verbose=verbose)


def _sensor_record(nusc, sample_data_token: str) -> dict:
    """Path (relative to the root), calibration and ego pose of one sample_data record."""
    sd = nusc.get("sample_data", sample_data_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return {
        "data_path": sd["filename"],
        "type": nusc.get("sensor", cs["sensor_token"])["channel"],
        "sample_data_token": sd["token"],
        "timestamp": int(sd["timestamp"]),
        "sensor2ego_translation": list(cs["translation"]),
        "sensor2ego_rotation": list(cs["rotation"]),
        "ego2global_translation": list(pose["translation"]),
        "ego2global_rotation": list(pose["rotation"]),
    }


def obtain_sensor2lidar(nusc, sample_data_token: str, lidar2ego: np.ndarray, ego2global: np.ndarray) -> dict:
    """A sweep/camera record plus ``sensor2lidar_rotation`` (3, 3) and ``sensor2lidar_translation`` (3,).

    The sensor's points go ``sensor -> ego(t_sensor) -> global -> ego(t_lidar) -> lidar`` so that
    ``p_lidar = R @ p_sensor + t`` lands in the keyframe LiDAR frame.
    """
    rec = _sensor_record(nusc, sample_data_token)
    sensor2global = pose_matrix(rec["ego2global_rotation"], rec["ego2global_translation"]) @ pose_matrix(
        rec["sensor2ego_rotation"], rec["sensor2ego_translation"]
    )
    sensor2lidar = np.linalg.inv(ego2global @ lidar2ego) @ sensor2global
    rec["sensor2lidar_rotation"] = sensor2lidar[:3, :3]
    rec["sensor2lidar_translation"] = sensor2lidar[:3, 3]
    return rec


def _annotations(nusc, sample: dict, lidar_token: str, lidar2ego: np.ndarray, ego2global: np.ndarray) -> dict:
    """GT of one sample in the LiDAR frame; categories without a detection name are dropped."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    # Boxes come back in the LiDAR frame of this keyframe, in the order of sample['anns'].
    _, boxes, _ = nusc.get_sample_data(lidar_token)
    global2lidar_rot = np.linalg.inv(ego2global @ lidar2ego)[:3, :3]
    rows, names, velos, n_lidar, n_radar, attrs = [], [], [], [], [], []
    for box, ann_token in zip(boxes, sample["anns"]):
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is None:
            continue
        if len(ann["attribute_tokens"]) > 1:
            raise ValueError(
                f"sample_annotation {ann_token} of sample {sample['token']} has "
                f"{len(ann['attribute_tokens'])} attributes; nuScenes allows at most one"
            )
        w, l, h = box.wlh  # nuScenes sizes are [w, l, h]
        rows.append([*box.center, l, w, h, box.orientation.yaw_pitch_roll[0]])
        names.append(name)
        # Global velocity (z dropped, as the devkit's eval does) rotated into the LiDAR frame.
        velo = np.array([*nusc.box_velocity(ann_token)[:2], 0.0])
        velos.append((global2lidar_rot @ velo)[:2])
        n_lidar.append(ann["num_lidar_pts"])
        n_radar.append(ann["num_radar_pts"])
        attrs.append(nusc.get("attribute", ann["attribute_tokens"][0])["name"] if ann["attribute_tokens"] else "")
    n_lidar = np.array(n_lidar, dtype=np.int64)
    n_radar = np.array(n_radar, dtype=np.int64)
    return {
        "gt_boxes": np.array(rows, dtype=np.float32).reshape(-1, 7),
        "gt_names": np.array(names, dtype=str).reshape(-1),
        "gt_velocity": np.array(velos, dtype=np.float32).reshape(-1, 2),
        "num_lidar_pts": n_lidar,
        "num_radar_pts": n_radar,
        "valid_flag": (n_lidar + n_radar) > 0,
        "gt_attrs": np.array(attrs, dtype=str).reshape(-1),
    }


def sample_info(nusc, sample: dict, max_sweeps: int = 10, with_gt: bool = True) -> dict:
    """The info dict of one keyframe sample (docs/data_format.md)."""
    lidar_token = sample["data"]["LIDAR_TOP"]
    lidar = _sensor_record(nusc, lidar_token)
    lidar2ego = pose_matrix(lidar["sensor2ego_rotation"], lidar["sensor2ego_translation"])
    ego2global = pose_matrix(lidar["ego2global_rotation"], lidar["ego2global_translation"])
    scene = nusc.get("scene", sample["scene_token"])
    info = {
        "token": sample["token"],
        "scene_token": sample["scene_token"],
        "timestamp": int(sample["timestamp"]),
        "location": nusc.get("log", scene["log_token"])["location"],
        "lidar_path": lidar["data_path"],
        "lidar2ego_translation": lidar["sensor2ego_translation"],
        "lidar2ego_rotation": lidar["sensor2ego_rotation"],
        "ego2global_translation": lidar["ego2global_translation"],
        "ego2global_rotation": lidar["ego2global_rotation"],
        "sweeps": [],
        "cams": {},
    }
    for cam in CAMERA_NAMES:
        if cam not in sample["data"]:
            continue
        rec = obtain_sensor2lidar(nusc, sample["data"][cam], lidar2ego, ego2global)
        sd = nusc.get("sample_data", sample["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        rec["camera_intrinsics"] = np.array(cs["camera_intrinsic"], dtype=np.float64)
        rec["width"], rec["height"] = int(sd["width"]), int(sd["height"])
        info["cams"][cam] = rec
    prev = nusc.get("sample_data", lidar_token)["prev"]
    while prev and len(info["sweeps"]) < max_sweeps:  # newest first
        info["sweeps"].append(obtain_sensor2lidar(nusc, prev, lidar2ego, ego2global))
        prev = nusc.get("sample_data", prev)["prev"]
    if with_gt:
        info.update(_annotations(nusc, sample, lidar_token, lidar2ego, ego2global))
    return info


def _split_scene_tokens(nusc, version: str) -> dict[str, set[str]]:
    """Split name ('train' / 'val' / 'test') -> tokens of the dataset's scenes in that devkit split."""
    from nuscenes.utils.splits import create_splits_scenes

    devkit = create_splits_scenes()
    by_name = {s["name"]: s["token"] for s in nusc.scene}
    train_split, val_split = TRAIN_VAL_SPLITS[version]
    out = {}
    if train_split is not None:
        out["train"] = {by_name[n] for n in devkit[train_split] if n in by_name}
        out["val"] = {by_name[n] for n in devkit[val_split] if n in by_name}
    else:
        out["test"] = {by_name[n] for n in devkit[val_split] if n in by_name}
    return out


def create_nuscenes_infos(
    root_path: str,
    version: str = "v1.0-mini",
    out_dir: str | None = None,
    max_sweeps: int = 10,
    info_prefix: str = "nuscenes",
) -> dict:
    """Write ``{out_dir}/{info_prefix}_infos_{train,val}.pkl`` (``_test.pkl`` for v1.0-test).

    Returns ``{"paths": {split: pkl path}, "counts": {split: number of samples}}``.
    """
    check_version(version)
    nusc = load_nuscenes(root_path, version)
    out_dir = root_path if out_dir is None else out_dir
    splits = _split_scene_tokens(nusc, version)
    if not any(splits.values()):
        names = sorted(s["name"] for s in nusc.scene)[:5]
        raise ValueError(
            f"none of the scenes in {root_path} ({', '.join(names)}, ...) belongs to the devkit splits of {version}"
        )
    with_gt = version != "v1.0-test"
    infos = {split: [] for split in splits}
    for sample in tqdm(nusc.sample, desc=f"nuScenes infos {version}", unit="sample"):
        for split, scene_tokens in splits.items():
            if sample["scene_token"] in scene_tokens:
                infos[split].append(sample_info(nusc, sample, max_sweeps=max_sweeps, with_gt=with_gt))
    os.makedirs(out_dir, exist_ok=True)
    result = {"paths": {}, "counts": {}}
    for split, split_infos in infos.items():
        path = os.path.join(out_dir, f"{info_prefix}_infos_{split}.pkl")
        with open(path, "wb") as f:
            pickle.dump({"infos": split_infos, "metadata": {"version": version}}, f)
        result["paths"][split] = path
        result["counts"][split] = len(split_infos)
    return result


def check_writable(path: str) -> None:
    """Fail early, naming the directory, rather than after minutes of work."""
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe) or "."
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise PermissionError(f"output directory {path!r} is not writable ({probe!r} is not a writable directory)")


def create_infos(root_path: str, version: str, out_dir: str | None, max_sweeps: int, prefix: str, database: bool) -> dict:
    """The info files of ``create_nuscenes_infos`` and (``database``) the GT database of the train split."""
    out_dir = out_dir or root_path
    check_writable(out_dir)
    summary = create_nuscenes_infos(root_path, version=version, out_dir=out_dir, max_sweeps=max_sweeps, info_prefix=prefix)
    if database:
        from mmdet3d.datasets.pipelines.dbsampler import create_groundtruth_database

        train_info = os.path.join(out_dir, f"{prefix}_infos_train.pkl")
        if os.path.exists(train_info):
            summary["database"] = create_groundtruth_database(root_path, train_info, out_dir, info_prefix=prefix)
    return summary
