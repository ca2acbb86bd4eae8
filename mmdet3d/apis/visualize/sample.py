"""What a render shows of one dataset sample, read without augmentation, and the model's view of it.

``read_sample`` takes a ``NuScenesDataset``-like dataset (``get_data_info``, ``get_ann_info``,
``data_infos`` with tokens): the un-augmented calibration, the original camera images, the GT
boxes (gravity centre, LiDAR frame) and the keyframe LiDAR points for display. Points are read
from the keyframe file whenever it exists, whether or not the model reads LiDAR; the render's
title says which (``points_note``). ``sample_batch`` is the sample through the dataset's own
pipeline (the test pipeline in inference mode), collated, as the model receives it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mmdet3d.core.points import load_points
from mmdet3d.datasets.pipelines.formatting import collate
from mmdet3d.utils.checkpoint import unwrap_model
from mmdet3d.utils.config import ConfigError

__all__ = ["VisualizeError", "VisualSample", "select_indices", "read_sample", "sample_batch", "model_bev_range",
           "config_bev_range", "points_load_dim"]


class VisualizeError(ValueError):
    """A sample token, sample count or dataset that cannot be rendered; the message names it."""


@dataclass
class VisualSample:
    """One sample as the renders draw it (un-augmented LiDAR frame)."""

    index: int
    token: str
    camera_names: list[str]
    image_paths: list[str]
    lidar2image: np.ndarray  # (N, 4, 4)
    lidar2ego: np.ndarray  # (4, 4)
    gt_boxes: np.ndarray  # (M, 9)
    gt_labels: np.ndarray  # (M,)
    points: np.ndarray | None  # (P, >=3) keyframe points for display, None without a LiDAR file
    points_note: str


def _tokens(dataset: Any) -> list[str]:
    infos = getattr(dataset, "data_infos", None)
    if infos is None or not hasattr(dataset, "get_data_info"):
        raise VisualizeError(f"{type(dataset).__name__} cannot be rendered: it has no data_infos / get_data_info "
                             "(a NuScenesDataset-style dataset is needed)")
    return [str(info["token"]) for info in infos]


def select_indices(dataset: Any, tokens: Sequence[str] | None = None, samples: int | None = None) -> list[int]:
    """Dataset indices of ``tokens`` (in the order given), else of the first ``samples`` samples."""
    known = _tokens(dataset)
    where = getattr(dataset, "ann_file", type(dataset).__name__)
    if tokens:
        position = {token: i for i, token in enumerate(known)}
        unknown = [t for t in tokens if t not in position]
        if unknown:
            raise VisualizeError(f"--tokens: sample token {unknown[0]!r} is not in {where} ({len(known)} samples; "
                                 f"first tokens: {', '.join(known[:3])})")
        return [position[t] for t in tokens]
    if samples is not None and samples < 1:
        raise VisualizeError(f"--samples must be >= 1, got {samples}")
    if not known:
        raise VisualizeError(f"{where} holds no samples")
    return list(range(len(known) if samples is None else min(samples, len(known))))


def points_load_dim(cfg: Mapping[str, Any], default: int = 5) -> int:
    """Floats per point of the LiDAR files: ``load_dim`` of a ``LoadPointsFromFile`` step of any
    pipeline in the config's ``data``, else ``default`` (nuScenes' 5)."""
    for section in (cfg.get("data") or {}).values():
        if not isinstance(section, Mapping):
            continue
        section = section.get("dataset", section)
        for step in section.get("pipeline") or []:
            if isinstance(step, Mapping) and step.get("type") == "LoadPointsFromFile":
                return int(step.get("load_dim", default))
    return default


def read_sample(dataset: Any, index: int, model_reads_points: bool | None = None, load_dim: int = 5) -> VisualSample:
    """Sample ``index`` of ``dataset`` for the renders. ``model_reads_points``: None without a model,
    else whether the model reads LiDAR (only for the points caption)."""
    data = dataset.get_data_info(index)
    ann = data.get("ann_info") or dataset.get_ann_info(index)
    names = data.get("camera_names") or [f"CAM_{i}" for i in range(len(data["image_paths"]))]
    lidar_path = data.get("lidar_path")
    points, note = None, "no LiDAR file: points not shown"
    if lidar_path and os.path.isfile(lidar_path):
        points = load_points(lidar_path, load_dim)
        note = {None: "LiDAR keyframe", True: "LiDAR keyframe (the model reads LiDAR)",
                False: "LiDAR keyframe for display only (the camera-only model reads none)"}[model_reads_points]
    return VisualSample(
        index=index,
        token=str(data["token"]),
        camera_names=list(names),
        image_paths=list(data["image_paths"]),
        lidar2image=np.asarray(data["lidar2image"], dtype=np.float64),
        lidar2ego=np.asarray(data.get("lidar2ego", np.eye(4)), dtype=np.float64),
        gt_boxes=np.asarray(ann["gt_bboxes_3d"], dtype=np.float64).reshape(-1, 9),
        gt_labels=np.asarray(ann["gt_labels_3d"], dtype=np.int64).reshape(-1),
        points=points,
        points_note=note,
    )


def sample_batch(dataset: Any, index: int) -> dict:
    """``dataset[index]`` collated into a batch of one."""
    return collate([dataset[index]])


def _head_range(model: torch.nn.Module) -> tuple[float, float, float, float] | None:
    heads = getattr(model, "heads", None)
    head = heads["object"] if heads is not None and "object" in heads else None
    coder = getattr(head, "coder", None)
    if coder is None:
        return None
    pcr = coder.point_cloud_range
    return pcr[0], pcr[1], pcr[3], pcr[4]


def model_bev_range(model: torch.nn.Module) -> tuple[float, float, float, float]:
    """``(x_min, y_min, x_max, y_max)`` of the object head's grid (a distiller's student's)."""
    model = unwrap_model(model)
    found = _head_range(getattr(model, "student", model))
    if found is None:
        raise ConfigError(f"{type(model).__name__} has no heads['object'] with a box coder: no BEV range to render")
    return found


def config_bev_range(cfg: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """The BEV range without building a model: ``model.heads.object.point_cloud_range`` (of the
    student for a distiller), else the top-level ``point_cloud_range``."""
    from mmdet3d.models.distillers.bev_distiller import resolve_model_config

    model = cfg.get("model") or {}
    if isinstance(model, Mapping) and "student" in model:
        model = resolve_model_config(model["student"], "model.student")
    head = ((model.get("heads") or {}).get("object") or {}) if isinstance(model, Mapping) else {}
    pcr = head.get("point_cloud_range", cfg.get("point_cloud_range"))
    if pcr is None or len(pcr) != 6:
        raise ConfigError(f"no BEV range: the config has neither model.heads.object.point_cloud_range nor "
                          f"point_cloud_range (6 values), got {pcr!r}")
    return float(pcr[0]), float(pcr[1]), float(pcr[3]), float(pcr[4])
