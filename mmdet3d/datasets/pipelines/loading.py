"""Loading steps: camera images, keyframe and sweep LiDAR points, 3D annotations.

Input is the sample dict of ``NuScenesDataset.get_data_info`` (docs/data_format.md); paths in it
are absolute. Points come out as a float32 tensor ``(P, 5)``: ``x, y, z, intensity, time_lag``
in the keyframe LiDAR frame (the files' 5th value, the ring index, is replaced by the time lag).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mmdet3d.core.points import load_points
from mmdet3d.datasets.builder import PIPELINES
from mmdet3d.utils.data_files import DataFileError, MissingDataFileError

__all__ = ["LoadMultiViewImageFromFiles", "LoadPointsFromFile", "LoadPointsFromMultiSweeps", "LoadAnnotations3D"]

TIME_LAG = 4  # column of the time lag in (x, y, z, intensity, time_lag)


def _sample_name(results: dict) -> str:
    return str(results.get("token", results.get("sample_idx", "<unknown sample>")))


def _require(results: dict, key: str, step: str):
    if key not in results:
        raise KeyError(f"{step}: sample {_sample_name(results)} has no {key!r} (keys: {sorted(results)})")
    return results[key]


def _dims(use_dim: int | Sequence[int]) -> list[int]:
    return list(range(use_dim)) if isinstance(use_dim, int) else [int(d) for d in use_dim]


def _set_time_lag(points: np.ndarray, time_lag: float) -> np.ndarray:
    """``(P, load_dim)`` from ``load_points`` (a fresh array, written in place) -> at least
    ``TIME_LAG + 1`` columns with column ``TIME_LAG`` set to ``time_lag`` seconds."""
    if points.shape[1] <= TIME_LAG:
        points = np.concatenate([points, np.zeros((len(points), TIME_LAG + 1 - points.shape[1]), np.float32)], axis=1)
    points[:, TIME_LAG] = time_lag
    return points


def check_image_sizes(results: dict, paths: Sequence[str], shapes: Sequence[tuple[int, int]]) -> None:
    """A ``DataFileError`` naming the image and sample when an image's ``(H, W)`` does not fit its
    calibration: the info's ``image_sizes`` where known, else the principal point of
    ``camera_intrinsics`` (it must lie inside the image) and the size of the sample's other images."""
    expected = results.get("image_sizes")
    intrinsics = results.get("camera_intrinsics")
    common = Counter(tuple(shape) for shape in shapes).most_common(1)[0][0] if shapes else None
    for i, (path, (h, w)) in enumerate(zip(paths, shapes)):
        where = f"camera image {path} (sample token {_sample_name(results)}) is {w}x{h} pixels"
        if expected is not None and expected[i] is not None and tuple(int(v) for v in expected[i]) != (h, w):
            raise DataFileError(f"{where} but its info and calibration say {int(expected[i][1])}x{int(expected[i][0])}")
        if intrinsics is not None and i < len(intrinsics):
            cx, cy = float(intrinsics[i][0][2]), float(intrinsics[i][1][2])
            if not (0 < cx < w and 0 < cy < h):
                raise DataFileError(f"{where} but its calibration puts the principal point at ({cx:.1f}, {cy:.1f}), "
                                    f"outside the image")
        if expected is None and (h, w) != common:
            raise DataFileError(f"{where} but the other images of the sample are {common[1]}x{common[0]}")


@PIPELINES.register_module()
class LoadMultiViewImageFromFiles:
    """``image_paths`` (N paths) -> ``img``: list of N ``(H, W, 3)`` uint8 RGB arrays.

    Also records ``ori_shape``: list of N ``(H, W)``. Each size must fit the calibration
    (``check_image_sizes``).
    """

    def __call__(self, results: dict) -> dict:
        paths = _require(results, "image_paths", type(self).__name__)
        images = []
        for path in paths:
            if not os.path.isfile(path):
                raise MissingDataFileError(f"camera image not found: {path} (sample {_sample_name(results)})")
            try:
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("RGB")))
            except (UnidentifiedImageError, OSError) as e:
                raise DataFileError(f"cannot read camera image {path} (sample {_sample_name(results)}): {e}") from e
        check_image_sizes(results, paths, [im.shape[:2] for im in images])
        results["img"] = images
        results["ori_shape"] = [im.shape[:2] for im in images]
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@PIPELINES.register_module()
class LoadPointsFromFile:
    """Keyframe ``lidar_path`` -> ``points`` ``(P, len(use_dim))`` float32 tensor, time lag 0.

    The file holds ``load_dim`` float32 values per point; column 4 (ring index on disk) is
    overwritten with the time lag 0 of the keyframe, then the columns ``use_dim`` are kept.
    """

    def __init__(self, coord_type: str = "LIDAR", load_dim: int = 5, use_dim: int | Sequence[int] = 5):
        if coord_type != "LIDAR":
            raise ValueError(f"LoadPointsFromFile: only coord_type='LIDAR' is supported, got {coord_type!r}")
        self.coord_type = coord_type
        self.load_dim = load_dim
        self.use_dim = _dims(use_dim)
        if max(self.use_dim) >= max(load_dim, TIME_LAG + 1):
            raise ValueError(f"LoadPointsFromFile: use_dim {self.use_dim} exceeds the {load_dim} loaded values (+ time lag)")

    def __call__(self, results: dict) -> dict:
        path = _require(results, "lidar_path", type(self).__name__)
        points = _set_time_lag(load_points(path, self.load_dim), 0.0)
        results["points"] = torch.from_numpy(np.ascontiguousarray(points[:, self.use_dim]))
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(load_dim={self.load_dim}, use_dim={self.use_dim})"


@PIPELINES.register_module()
class LoadPointsFromMultiSweeps:
    """Append ``sweeps_num`` earlier LiDAR sweeps to ``points``, moved into the keyframe LiDAR frame.

    Sweep points ``p_s`` (sensor frame of the sweep) become ``R @ p_s + t`` with ``R, t`` the
    sweep's ``sensor2lidar_rotation``/``sensor2lidar_translation``; their time-lag column is
    ``(timestamp - sweep timestamp) / 1e6`` seconds. The sweeps are the newest ``sweeps_num`` of
    every ``sweep_stride``-th one (stride 3 at 20 Hz: lags 0.15, 0.3, 0.45 s), the same choice at
    training and at test, so a model never meets time lags at test that it did not train on
    (``test_mode`` is accepted for configs written for mmdetection3d and changes nothing). With no sweeps and
    ``pad_empty_sweeps``, the keyframe is repeated ``sweeps_num`` times (time lag 0) so that the
    point density matches samples that have sweeps. ``remove_close`` drops sweep points within
    ``close_radius`` (in x and y) of the sensor: they hit the ego vehicle.
    """

    def __init__(
        self,
        sweeps_num: int = 9,
        load_dim: int = 5,
        use_dim: int | Sequence[int] = 5,
        pad_empty_sweeps: bool = True,
        remove_close: bool = True,
        test_mode: bool = False,
        close_radius: float = 1.0,
        sweep_stride: int = 1,
    ):
        if int(sweep_stride) < 1:
            raise ValueError(f"LoadPointsFromMultiSweeps: sweep_stride must be >= 1, got {sweep_stride!r}")
        self.sweep_stride = int(sweep_stride)
        self.sweeps_num = sweeps_num
        self.load_dim = load_dim
        self.use_dim = _dims(use_dim)
        self.pad_empty_sweeps = pad_empty_sweeps
        self.remove_close = remove_close
        self.test_mode = test_mode
        self.close_radius = close_radius

    def _remove_close(self, points: np.ndarray) -> np.ndarray:
        close = (np.abs(points[:, 0]) < self.close_radius) & (np.abs(points[:, 1]) < self.close_radius)
        return points[~close]

    def choose_sweeps(self, num_sweeps: int) -> np.ndarray:
        """Indices into the newest-first sweep list of a sample with ``num_sweeps`` sweeps."""
        return np.arange(self.sweep_stride - 1, num_sweeps, self.sweep_stride)[: self.sweeps_num]

    def _load_sweep(self, sweep: dict, timestamp: float, results: dict) -> np.ndarray:
        for key in ("data_path", "timestamp", "sensor2lidar_rotation", "sensor2lidar_translation"):
            if key not in sweep:
                raise KeyError(f"LoadPointsFromMultiSweeps: a sweep of sample {_sample_name(results)} has no {key!r}")
        time_lag = (timestamp - float(sweep["timestamp"])) / 1e6
        points = _set_time_lag(load_points(sweep["data_path"], self.load_dim), time_lag)
        if self.remove_close:
            points = self._remove_close(points)
        rotation = np.asarray(sweep["sensor2lidar_rotation"], dtype=np.float32).reshape(3, 3)
        translation = np.asarray(sweep["sensor2lidar_translation"], dtype=np.float32).reshape(3)
        points[:, :3] = points[:, :3] @ rotation.T + translation  # float32: ~1e-5 m at 100 m
        return points[:, self.use_dim]

    def __call__(self, results: dict) -> dict:
        keyframe = _require(results, "points", type(self).__name__)
        if keyframe.shape[1] != len(self.use_dim):
            raise ValueError(
                f"LoadPointsFromMultiSweeps: keyframe points of sample {_sample_name(results)} have "
                f"{keyframe.shape[1]} columns but use_dim keeps {len(self.use_dim)}; use the same use_dim in LoadPointsFromFile"
            )
        sweeps = results.get("sweeps", [])
        parts = [keyframe.numpy()]
        if not sweeps:
            if self.pad_empty_sweeps:
                pad = self._remove_close(parts[0]) if self.remove_close else parts[0]
                parts += [pad] * self.sweeps_num
        else:
            timestamp = float(_require(results, "timestamp", type(self).__name__))
            parts += [self._load_sweep(sweeps[i], timestamp, results) for i in self.choose_sweeps(len(sweeps))]
        results["points"] = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32))
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sweeps_num={self.sweeps_num}, sweep_stride={self.sweep_stride})"


@PIPELINES.register_module()
class LoadAnnotations3D:
    """``ann_info`` -> ``gt_bboxes_3d`` ``(M, 9)`` float32 tensor, ``gt_labels_3d`` ``(M,)`` int64 tensor.

    ``gt_names`` ``(M,)`` is copied along when present so that later filters keep it aligned.
    """

    def __init__(self, with_bbox_3d: bool = True, with_label_3d: bool = True):
        self.with_bbox_3d = with_bbox_3d
        self.with_label_3d = with_label_3d

    def __call__(self, results: dict) -> dict:
        ann = _require(results, "ann_info", type(self).__name__)
        if self.with_bbox_3d:
            boxes = np.asarray(_require(ann, "gt_bboxes_3d", "LoadAnnotations3D ann_info"), dtype=np.float32)
            boxes = boxes.reshape(0, 9) if boxes.size == 0 else boxes
            if boxes.ndim != 2 or boxes.shape[1] != 9:
                raise ValueError(
                    f"LoadAnnotations3D: ann_info['gt_bboxes_3d'] of sample {_sample_name(results)} must be (M, 9) "
                    f"(x, y, z, dx, dy, dz, yaw, vx, vy), got shape {boxes.shape}"
                )
            results["gt_bboxes_3d"] = torch.from_numpy(boxes.copy())
        if self.with_label_3d:
            labels = np.asarray(_require(ann, "gt_labels_3d", "LoadAnnotations3D ann_info"), dtype=np.int64).reshape(-1)
            results["gt_labels_3d"] = torch.from_numpy(labels.copy())
        if "gt_names" in ann:
            results["gt_names"] = np.asarray(ann["gt_names"])
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(with_bbox_3d={self.with_bbox_3d}, with_label_3d={self.with_label_3d})"
