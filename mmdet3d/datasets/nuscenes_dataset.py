"""``NuScenesDataset``: info files -> sample dicts (docs/data_format.md) -> pipeline; devkit evaluation.

Reads our BEVFusion-style infos (``{"infos", "metadata"}``) and mmdet3d 1.x infos
(``{"metainfo", "data_list"}``) alike; both become the same in-memory info form.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from typing import Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from mmdet3d.datasets.builder import DATASETS
from mmdet3d.datasets.mmdet3d_v1_infos import convert_v1_data, is_mmdet3d_v1_infos
from mmdet3d.datasets.nuscenes_utils import EVAL_SPLITS, NUSCENES_CLASSES, TRAIN_VAL_SPLITS, check_version, pose_matrix
from mmdet3d.datasets.pipelines.compose import Compose
from mmdet3d.utils.data_files import DataFileError, MissingDataFileError, load_trusted_pickle, with_sample_token

__all__ = ["NuScenesDataset", "PredictionError"]

_DEFAULT_MODALITY = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


class PredictionError(ValueError):
    """Predictions do not fit the dataset (tokens, count) or hold nan/inf; the message names the sample."""


def check_finite_predictions(results: Sequence[Mapping], tokens: Sequence[str]) -> None:
    """``PredictionError`` naming the sample whose ``boxes_3d`` or ``scores_3d`` hold nan/inf."""
    for result, token in zip(results, tokens):
        for key in ("boxes_3d", "scores_3d"):
            values = np.asarray(result[key].detach().cpu() if hasattr(result[key], "detach") else result[key], dtype=np.float64)
            if not np.isfinite(values).all():
                raise PredictionError(f"prediction for sample {token}: {key} holds {int((~np.isfinite(values)).sum())} "
                                      f"non-finite values (nan/inf)")


@DATASETS.register_module()
class NuScenesDataset(Dataset):
    """One item per keyframe sample: ``get_data_info`` builds the sample dict, the pipeline the rest.

    Args:
        dataset_root: nuScenes root; relative info paths are joined with it.
        ann_file: info pkl (ours or mmdet3d 1.x); a relative path is also looked up under the root.
        object_classes: detection classes, label ``i`` = ``object_classes[i]``.
        use_valid_flag: keep boxes with ``valid_flag`` (LiDAR + radar points > 0); otherwise keep
            boxes with ``num_lidar_pts > 0``.
        load_interval: keep every ``load_interval``-th info.
        filter_empty_gt: in training, redraw samples left without GT boxes by the pipeline.
        version: devkit version for evaluation; default from the info file's metadata.
    """

    CLASSES = NUSCENES_CLASSES

    def __init__(
        self,
        dataset_root: str,
        ann_file: str,
        pipeline: Sequence[Mapping] | None = None,
        object_classes: Sequence[str] = NUSCENES_CLASSES,
        modality: Mapping[str, bool] | None = None,
        test_mode: bool = False,
        use_valid_flag: bool = True,
        load_interval: int = 1,
        filter_empty_gt: bool = False,
        eval_version: str = "detection_cvpr_2019",
        version: str | None = None,
    ):
        self.dataset_root = dataset_root
        self.ann_file = self._find_ann_file(dataset_root, ann_file)
        self.object_classes = tuple(object_classes)
        self.modality = {**_DEFAULT_MODALITY, **(modality or {})}
        self.test_mode = test_mode
        self.use_valid_flag = use_valid_flag
        self.filter_empty_gt = filter_empty_gt
        self.eval_version = eval_version
        if load_interval < 1:
            raise ValueError(f"load_interval must be >= 1, got {load_interval}")
        infos, meta_version = self.load_annotations(self.ann_file)
        self.data_infos = infos[::load_interval]
        self.version = check_version(version or meta_version or "v1.0-trainval")
        self.pipeline = Compose(pipeline) if pipeline else None
        self._nusc = None

    @staticmethod
    def _find_ann_file(dataset_root: str, ann_file: str) -> str:
        if os.path.isfile(ann_file):
            return ann_file
        under_root = os.path.join(dataset_root, ann_file)
        if os.path.isfile(under_root):
            return under_root
        raise MissingDataFileError(f"info file not found: {ann_file} (also looked for {under_root})")

    def load_annotations(self, ann_file: str) -> tuple[list[dict], str | None]:
        """-> (infos, version from the file's metadata or None).

        The info file is a plain pickle, so it is trusted input (``load_trusted_pickle``); a
        truncated or corrupt one is a ``DataFileError`` naming it.
        """
        data = load_trusted_pickle(ann_file)
        if is_mmdet3d_v1_infos(data):
            return convert_v1_data(data, ann_file, self.dataset_root), data.get("metainfo", {}).get("version")
        if not isinstance(data, dict) or "infos" not in data:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{ann_file}: expected an info file with 'infos' or 'data_list', found {keys}")
        return list(data["infos"]), data.get("metadata", {}).get("version")

    def __len__(self) -> int:
        return len(self.data_infos)

    def _abspath(self, path: str) -> str:
        return os.path.join(self.dataset_root, path)

    def get_data_info(self, index: int) -> dict:
        """The sample dict of docs/data_format.md: absolute paths, float32 4x4 matrices, ``ann_info``."""
        info = self.data_infos[index]
        data = {
            "token": info["token"],
            "sample_idx": index,
            "scene_token": info.get("scene_token", ""),
            "timestamp": info["timestamp"],
            "location": info.get("location", ""),
            "lidar_path": self._abspath(info["lidar_path"]),
            "sweeps": [{**s, "data_path": self._abspath(s["data_path"])} for s in info.get("sweeps", [])],
            "lidar2ego": pose_matrix(info["lidar2ego_rotation"], info["lidar2ego_translation"]).astype(np.float32),
            "ego2global": pose_matrix(info["ego2global_rotation"], info["ego2global_translation"]).astype(np.float32),
        }
        image_paths, image_sizes, intrinsics, camera2ego, camera2lidar = [], [], [], [], []
        for cam in info["cams"].values():
            image_paths.append(self._abspath(cam["data_path"]))
            image_sizes.append((cam["height"], cam["width"]) if cam.get("width") else None)
            k = np.eye(4)
            k[:3, :3] = cam["camera_intrinsics"]
            intrinsics.append(k)
            camera2ego.append(pose_matrix(cam["sensor2ego_rotation"], cam["sensor2ego_translation"]))
            camera2lidar.append(pose_matrix(cam["sensor2lidar_rotation"], cam["sensor2lidar_translation"]))
        # Invert and multiply in float64 so that lidar2image matches intrinsics @ lidar2camera closely.
        intrinsics = np.array(intrinsics).reshape(-1, 4, 4)
        camera2lidar = np.array(camera2lidar).reshape(-1, 4, 4)
        lidar2camera = np.linalg.inv(camera2lidar)
        if any(size is not None for size in image_sizes):
            data["image_sizes"] = image_sizes
        data.update(
            camera_names=list(info["cams"]),
            image_paths=image_paths,
            camera_intrinsics=intrinsics.astype(np.float32),
            camera2ego=np.array(camera2ego).reshape(-1, 4, 4).astype(np.float32),
            camera2lidar=camera2lidar.astype(np.float32),
            lidar2camera=lidar2camera.astype(np.float32),
            lidar2image=(intrinsics @ lidar2camera).astype(np.float32),
        )
        data["ann_info"] = self.get_ann_info(index)
        return data

    def get_ann_info(self, index: int) -> dict:
        """GT of one sample: ``gt_bboxes_3d`` (M, 9) float32 (nan velocity -> 0), ``gt_labels_3d`` (M,)
        int64, ``gt_names`` (M,), ``gt_attrs`` (M,). Boxes without points and classes outside
        ``object_classes`` are dropped."""
        info = self.data_infos[index]
        if "gt_boxes" not in info:  # test split: no annotations
            return {"gt_bboxes_3d": np.zeros((0, 9), np.float32), "gt_labels_3d": np.zeros(0, np.int64),
                    "gt_names": np.zeros(0, dtype=str), "gt_attrs": np.zeros(0, dtype=str)}
        keep = np.asarray(info["valid_flag"] if self.use_valid_flag else info["num_lidar_pts"] > 0, dtype=bool)
        keep &= np.isin(info["gt_names"], self.object_classes)
        names = np.asarray(info["gt_names"])[keep]
        velocity = np.nan_to_num(np.asarray(info["gt_velocity"], dtype=np.float32)[keep], nan=0.0)
        boxes = np.concatenate([np.asarray(info["gt_boxes"], dtype=np.float32)[keep], velocity], axis=1)
        labels = np.array([self.object_classes.index(n) for n in names], dtype=np.int64)
        attrs = np.asarray(info.get("gt_attrs", np.full(len(keep), "")))[keep]
        return {"gt_bboxes_3d": boxes.reshape(-1, 9), "gt_labels_3d": labels, "gt_names": names, "gt_attrs": attrs}

    def sample_files(self, index: int) -> list[str]:
        """Absolute paths of the files that the configured modalities read for sample ``index``."""
        info = self.data_infos[index]
        files = []
        if self.modality["use_lidar"]:
            files.append(self._abspath(info["lidar_path"]))
            files += [self._abspath(s["data_path"]) for s in info.get("sweeps", [])]
        if self.modality["use_camera"]:
            files += [self._abspath(c["data_path"]) for c in info["cams"].values()]
        return files

    def check_files(self, index: int | None = None) -> None:
        """Raise ``MissingDataFileError`` naming the first missing file and its sample token."""
        for i in range(len(self)) if index is None else [index]:
            for path in self.sample_files(i):
                if not os.path.exists(path):
                    raise MissingDataFileError(
                        f"file not found: {path} (sample token {self.data_infos[i]['token']}, "
                        f"info file {self.ann_file})"
                    )

    def prepare_data(self, index: int) -> dict | None:
        self.check_files(index)
        data = self.get_data_info(index)
        if self.pipeline is not None:
            try:
                data = self.pipeline(data)
            except (DataFileError, MissingDataFileError) as e:
                raise with_sample_token(e, data["token"]) from e
        if data is not None and not self.test_mode and self.filter_empty_gt:
            labels = data.get("gt_labels_3d", data.get("ann_info", {}).get("gt_labels_3d"))
            if labels is None or not (np.asarray(labels) >= 0).any():
                return None
        return data

    def __getitem__(self, index: int) -> dict:
        # Training replaces a dropped sample by the next one (deterministic); testing never drops.
        attempts = 1 if self.test_mode else len(self)
        for offset in range(attempts):
            data = self.prepare_data((index + offset) % len(self))
            if data is not None:
                return data
        raise RuntimeError(f"the pipeline dropped sample {self.data_infos[index]['token']}"
                           + ("" if self.test_mode else f" and every other sample of {self.ann_file}"))

    def set_epoch(self, epoch: int) -> None:
        if self.pipeline is not None:
            self.pipeline.set_epoch(epoch)

    @property
    def nusc(self):
        """``nuscenes.NuScenes`` on the dataset root, built on first use (evaluation only)."""
        if self._nusc is None:
            from mmdet3d.datasets.nuscenes_converter import load_nuscenes

            self._nusc = load_nuscenes(self.dataset_root, self.version)
        return self._nusc

    def format_results(self, results: Sequence[Mapping]) -> dict:
        """Predictions (dataset order, or matched by an optional ``token`` key) -> nuScenes result json."""
        from nuscenes.eval.common.config import config_factory

        from mmdet3d.datasets.nuscenes_eval import format_nuscenes_results

        by_token = {info["token"]: info for info in self.data_infos}
        if results and all("token" in r for r in results):
            unknown = [r["token"] for r in results if r["token"] not in by_token]
            if unknown:
                raise PredictionError(f"{len(unknown)} predictions name sample tokens not in {self.ann_file} "
                                      f"(first: {unknown[0]}); were they made on another split?")
            repeated = [token for token, n in Counter(r["token"] for r in results).items() if n > 1]
            if repeated:
                raise PredictionError(f"{len(repeated)} predictions repeat a sample token (first: {repeated[0]})")
            infos = [by_token[r["token"]] for r in results]
        elif any("token" in r for r in results):
            raise PredictionError(f"{sum('token' not in r for r in results)} of {len(results)} predictions have no 'token'")
        elif len(results) != len(self):
            raise PredictionError(f"{len(results)} predictions without 'token' keys for {len(self)} samples; "
                                  f"give one per sample in dataset order or add 'token' to each")
        else:
            infos = self.data_infos
        check_finite_predictions(results, [info["token"] for info in infos])
        samples = [{
            "token": info["token"],
            "lidar2ego": pose_matrix(info["lidar2ego_rotation"], info["lidar2ego_translation"]),
            "ego2global": pose_matrix(info["ego2global_rotation"], info["ego2global_translation"]),
        } for info in infos]
        class_range = config_factory(self.eval_version).class_range
        return format_nuscenes_results(results, samples, self.object_classes, class_range, self.modality)

    def evaluate(self, results: Sequence[Mapping], out_dir: str | None = None, metric: str = "bbox") -> dict:
        """Score predictions with the devkit; writes results_nusc.json and metrics_summary.json to
        ``out_dir`` (a temporary folder if None) and returns ``mAP``, ``NDS``, TP errors and
        per-class ``object/...`` metrics."""
        if metric != "bbox":
            raise ValueError(f"unsupported metric {metric!r}; NuScenesDataset evaluates 'bbox'")
        if self.version == "v1.0-test":
            raise ValueError("v1.0-test has no annotations to evaluate against; submit results_nusc.json instead")
        if out_dir is None:
            with tempfile.TemporaryDirectory() as tmp:
                return self._evaluate_in(results, tmp)
        return self._evaluate_in(results, out_dir)

    def _evaluate_in(self, results: Sequence[Mapping], out_dir: str) -> dict:
        from mmdet3d.datasets.nuscenes_eval import run_detection_eval, summarize_metrics, write_results

        result_path = write_results(self.format_results(results), out_dir)
        summary = run_detection_eval(self.nusc, result_path, self.eval_split(), out_dir, self.eval_version)
        return summarize_metrics(summary)

    def eval_split(self) -> str:
        """The devkit split that holds every sample of this dataset (a train info file is scored
        against the train split); ``EVAL_SPLITS`` of the version when none does."""
        from mmdet3d.datasets.nuscenes_eval import split_sample_tokens

        tokens = {info["token"] for info in self.data_infos}
        for split in TRAIN_VAL_SPLITS[self.version]:
            if split is not None and tokens <= set(split_sample_tokens(self.nusc, split)):
                return split
        return EVAL_SPLITS[self.version]
