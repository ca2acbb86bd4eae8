"""GT-paste augmentation: a database of the points inside each training box, and ``ObjectPaste``.

Database layout (written by ``create_groundtruth_database`` into ``out_dir``):

- ``{prefix}_gt_database/{token}_{name}_{k}.bin``: float32 ``(K, 5)`` points ``(x, y, z, intensity,
  time_lag)`` of box ``k`` of sample ``token`` (keyframe plus sweeps), with ``x, y, z`` relative
  to the box's gravity centre (translated only: the axes stay those of the LiDAR frame);
- ``{prefix}_dbinfos_train.pkl``: ``{class name: [dbinfo, ...]}``, each dbinfo ``{"name", "path"
  (relative to out_dir), "sample_token", "gt_idx", "box_3d" (9,) (x, y, z, dx, dy, dz, yaw, vx, vy),
  "num_points_in_gt", "difficulty"}``.

Pasted objects go back where they were recorded (same LiDAR-frame pose).
"""
from __future__ import annotations

import os
import pickle
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mmdet3d.core.bbox import points_in_boxes
from mmdet3d.core.points import load_points
from mmdet3d.datasets.builder import PIPELINES
from mmdet3d.utils.data_files import MissingDataFileError, load_trusted_pickle

__all__ = ["ObjectPaste", "DataBaseSampler", "bev_boxes_collide", "create_groundtruth_database"]


def bev_boxes_collide(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """``(n, >=7)``, ``(m, >=7)`` boxes -> ``(n, m)`` bool: rotated BEV footprints overlap.

    Separating-axis test on the two rectangles' four edge directions; touching edges do not
    count as overlap.
    """
    a, b = np.asarray(boxes_a, np.float64)[:, None, :7], np.asarray(boxes_b, np.float64)[None, :, :7]
    frames = []
    for box in (a, b):
        heading = np.stack([np.cos(box[..., 6]), np.sin(box[..., 6])], -1)
        frames.append((heading, np.stack([-heading[..., 1], heading[..., 0]], -1), box[..., 3] / 2, box[..., 4] / 2))
    offset = b[..., :2] - a[..., :2]  # (n, m, 2)
    overlap = np.ones(offset.shape[:2], dtype=bool)
    for axis in (frames[0][0], frames[0][1], frames[1][0], frames[1][1]):
        # Half-extent of each rectangle projected on the axis; separated if the centres are further apart.
        extent = sum(hl * np.abs((axis * h).sum(-1)) + hw * np.abs((axis * n).sum(-1)) for h, n, hl, hw in frames)
        overlap &= np.abs((axis * offset).sum(-1)) < extent
    return overlap


class DataBaseSampler:
    """Draws database objects per class (built by ``ObjectPaste`` from its ``db_sampler`` dict).

    Args:
        dataset_root: a relative ``info_path`` is joined with it.
        info_path: ``{prefix}_dbinfos_train.pkl``; object files are read relative to its folder.
        rate: scales the number of objects drawn per class.
        prepare: ``filter_by_min_points={class: n}`` keeps objects with >= n points;
            ``filter_by_difficulty=[d, ...]`` drops objects of those difficulties.
        classes: label ``i`` is ``classes[i]`` (the dataset's ``object_classes``).
        sample_groups: ``{class: n}``: draw until the sample holds up to ``n`` objects of the class.
        load_dim: float32 values per point in the object files.
    """

    def __init__(
        self,
        dataset_root: str,
        info_path: str,
        classes: Sequence[str],
        sample_groups: Mapping[str, int],
        rate: float = 1.0,
        prepare: Mapping[str, object] | None = None,
        load_dim: int = 5,
    ):
        self.info_path = info_path if os.path.isabs(info_path) else os.path.join(dataset_root, info_path)
        if not os.path.isfile(self.info_path):
            raise MissingDataFileError(
                f"GT database info file not found: {self.info_path}; write it with create_groundtruth_database "
                f"(tools/create_data.py)"
            )
        self.db_root = os.path.dirname(self.info_path)
        self.classes = list(classes)
        unknown = sorted(set(sample_groups) - set(self.classes))
        if unknown:
            raise ValueError(f"DataBaseSampler: sample_groups names classes {unknown} not in classes {self.classes}")
        self.sample_groups = {k: int(v) for k, v in sample_groups.items()}
        self.rate = rate
        self.load_dim = load_dim
        db_infos = load_trusted_pickle(self.info_path, "GT database info file")
        self.db_infos = {name: self._prepare(name, db_infos.get(name, []), prepare or {}) for name in self.sample_groups}

    @staticmethod
    def _prepare(name: str, infos: list[dict], prepare: Mapping[str, object]) -> list[dict]:
        unknown = sorted(set(prepare) - {"filter_by_min_points", "filter_by_difficulty"})
        if unknown:
            raise ValueError(f"DataBaseSampler: unknown prepare keys {unknown}; use filter_by_min_points / filter_by_difficulty")
        min_points = int(prepare.get("filter_by_min_points", {}).get(name, 0))
        drop_difficulty = set(prepare.get("filter_by_difficulty", []))
        return [i for i in infos if i["num_points_in_gt"] >= min_points and i.get("difficulty", 0) not in drop_difficulty]

    def sample_all(self, gt_bboxes_3d: np.ndarray, gt_labels_3d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (boxes (S, 9) float32, labels (S,) int64, points (Q, load_dim) float32 in the LiDAR frame)."""
        avoid = np.asarray(gt_bboxes_3d, np.float64)[:, :7]
        chosen: list[dict] = []
        for name, max_num in self.sample_groups.items():
            label = self.classes.index(name)
            num = int(round(self.rate * (max_num - int((gt_labels_3d == label).sum()))))
            pool = self.db_infos[name]
            if num <= 0 or not pool:
                continue
            candidates = [pool[i] for i in np.random.permutation(len(pool))[:num]]
            boxes = np.stack([c["box_3d"] for c in candidates]).astype(np.float64)
            hits_existing = bev_boxes_collide(boxes, avoid).any(1) if len(avoid) else np.zeros(len(boxes), bool)
            hits_each_other = bev_boxes_collide(boxes, boxes)
            accepted: list[int] = []
            for i in range(len(candidates)):
                if not hits_existing[i] and not hits_each_other[i, accepted].any():
                    accepted.append(i)
            chosen += [candidates[i] for i in accepted]
            avoid = np.concatenate([avoid, boxes[accepted, :7]], axis=0)
        if not chosen:
            return np.zeros((0, 9), np.float32), np.zeros(0, np.int64), np.zeros((0, self.load_dim), np.float32)
        boxes = np.stack([np.asarray(c["box_3d"], np.float32) for c in chosen])
        labels = np.array([self.classes.index(c["name"]) for c in chosen], dtype=np.int64)
        points = []
        for info, box in zip(chosen, boxes):
            obj = load_points(os.path.join(self.db_root, info["path"]), self.load_dim, allow_empty=True)
            obj[:, :3] += box[:3]
            points.append(obj)
        return boxes, labels, np.concatenate(points, axis=0)


@PIPELINES.register_module()
class ObjectPaste:
    """Paste database objects (points and boxes) into the sample without BEV overlap with its
    boxes or with each other; original points inside pasted boxes are removed. From epoch
    ``stop_epoch`` on (see ``set_epoch``) it does nothing.
    """

    def __init__(self, db_sampler: Mapping, stop_epoch: int | None = None):
        self.db_sampler = DataBaseSampler(**db_sampler)
        self.stop_epoch = stop_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, results: dict) -> dict:
        if self.stop_epoch is not None and self.epoch >= self.stop_epoch:
            return results
        gt_boxes, gt_labels = results["gt_bboxes_3d"], results["gt_labels_3d"]
        boxes, labels, obj_points = self.db_sampler.sample_all(gt_boxes.numpy(), gt_labels.numpy())
        if len(boxes) == 0:
            return results
        boxes_t = torch.from_numpy(boxes)
        points = results["points"]
        if obj_points.shape[1] != points.shape[1]:
            raise ValueError(
                f"ObjectPaste: database points of {self.db_sampler.info_path} have {obj_points.shape[1]} values "
                f"(db_sampler load_dim), sample {results.get('token', '?')} points {points.shape[1]}"
            )
        kept = points[~points_in_boxes(points, boxes_t).any(1)]
        results["points"] = torch.cat([torch.from_numpy(obj_points).to(points.dtype), kept])
        results["gt_bboxes_3d"] = torch.cat([gt_boxes, boxes_t.to(gt_boxes.dtype)])
        results["gt_labels_3d"] = torch.cat([gt_labels, torch.from_numpy(labels)])
        if "gt_names" in results:
            names = np.array([self.db_sampler.classes[i] for i in labels])
            results["gt_names"] = np.concatenate([np.asarray(results["gt_names"]), names])
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sample_groups={self.db_sampler.sample_groups}, stop_epoch={self.stop_epoch})"


def create_groundtruth_database(
    dataset_root: str,
    info_path: str,
    out_dir: str,
    info_prefix: str = "nuscenes",
    sweeps_num: int = 10,
    use_valid_flag: bool = True,
) -> str:
    """Write the points of every GT box of ``info_path`` (train infos) -> path of the dbinfos pkl.

    Points are the keyframe plus ``sweeps_num`` sweeps (newest first), as training loads them.
    """
    from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset

    pipeline = [
        dict(type="LoadPointsFromFile", coord_type="LIDAR", load_dim=5, use_dim=5),
        dict(type="LoadPointsFromMultiSweeps", sweeps_num=sweeps_num, load_dim=5, use_dim=5,
             pad_empty_sweeps=False, remove_close=True, test_mode=True),
        dict(type="LoadAnnotations3D", with_bbox_3d=True, with_label_3d=True),
    ]
    dataset = NuScenesDataset(
        dataset_root, info_path, pipeline=pipeline, test_mode=True, use_valid_flag=use_valid_flag,
        modality=dict(use_camera=False, use_lidar=True),
    )
    db_dir = f"{info_prefix}_gt_database"
    os.makedirs(os.path.join(out_dir, db_dir), exist_ok=True)
    db_infos: dict[str, list[dict]] = {}
    for index in tqdm(range(len(dataset)), desc="gt database"):
        data = dataset[index]
        points, boxes, names = data["points"], data["gt_bboxes_3d"], data["gt_names"]
        if len(boxes) == 0:
            continue
        inside = points_in_boxes(points, boxes)  # (P, M)
        for k, (box, name) in enumerate(zip(boxes.numpy(), names)):
            obj = points[inside[:, k]].numpy().copy()
            obj[:, :3] -= box[:3]
            rel_path = os.path.join(db_dir, f"{data['token']}_{name}_{k}.bin")
            obj.astype(np.float32).tofile(os.path.join(out_dir, rel_path))
            db_infos.setdefault(str(name), []).append({
                "name": str(name), "path": rel_path, "sample_token": data["token"], "gt_idx": k,
                "box_3d": box.astype(np.float32), "num_points_in_gt": int(len(obj)), "difficulty": 0,
            })
    out_path = os.path.join(out_dir, f"{info_prefix}_dbinfos_train.pkl")
    with open(out_path, "wb") as f:
        pickle.dump(db_infos, f)
    return out_path
