"""Final pipeline steps and the batch collate function (docs/data_format.md "Batch").

``DefaultFormatBundle3D`` turns numpy values into tensors; ``Collect3D`` keeps the model's keys
and gathers identity/book-keeping values into ``metas``; ``collate`` stacks fixed-size values
and keeps variable-size ones (points, boxes) as lists.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mmdet3d.datasets.builder import PIPELINES

__all__ = ["DefaultFormatBundle3D", "Collect3D", "collate", "MATRIX_KEYS", "LIST_KEYS", "DEFAULT_META_KEYS"]

MATRIX_KEYS = (
    "camera_intrinsics",
    "camera2ego",
    "camera2lidar",
    "lidar2camera",
    "lidar2image",
    "img_aug_matrix",
    "lidar_aug_matrix",
    "lidar2ego",
    "ego2global",
)
LIST_KEYS = ("points", "gt_bboxes_3d", "gt_labels_3d", "gt_names")
DEFAULT_META_KEYS = ("token", "sample_idx", "timestamp", "scene_token", "location", "lidar_path", "image_paths")


@PIPELINES.register_module()
class DefaultFormatBundle3D:
    """numpy -> tensors: matrices float32, ``points``/``gt_bboxes_3d`` float32, ``gt_labels_3d``
    int64, ``depth_map`` float32, ``fg_map`` int64; an ``img`` list not yet normalised becomes an
    unnormalised float32 tensor ``(N, 3, H, W)``.
    """

    def __call__(self, results: dict) -> dict:
        for key in MATRIX_KEYS:
            if key in results:
                results[key] = torch.as_tensor(np.asarray(results[key], dtype=np.float32))
        for key, dtype in (("points", torch.float32), ("gt_bboxes_3d", torch.float32), ("depth_map", torch.float32),
                           ("gt_labels_3d", torch.int64), ("fg_map", torch.int64)):
            if key in results:
                value = results[key]
                results[key] = (value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))).to(dtype)
        if "img" in results and not isinstance(results["img"], torch.Tensor):
            images = np.stack([np.asarray(im) for im in results["img"]])
            results["img"] = torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@PIPELINES.register_module()
class Collect3D:
    """Keep ``keys`` (all required) and put ``meta_keys`` (those present) in ``results['metas']``."""

    def __init__(self, keys: Sequence[str], meta_keys: Sequence[str] = DEFAULT_META_KEYS):
        self.keys = list(keys)
        self.meta_keys = list(meta_keys)

    def __call__(self, results: dict) -> dict:
        missing = [k for k in self.keys if k not in results]
        if missing:
            raise KeyError(
                f"Collect3D: sample {results.get('token', '?')} lacks keys {missing}; present: {sorted(results)}. "
                f"Add the pipeline step that makes them or drop them from Collect3D.keys"
            )
        data = {k: results[k] for k in self.keys}
        data["metas"] = {k: results[k] for k in self.meta_keys if k in results}
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(keys={self.keys}, meta_keys={self.meta_keys})"


def _stack(key: str, values: list[Any]) -> Any:
    if isinstance(values[0], (torch.Tensor, np.ndarray)):
        tensors = [torch.as_tensor(v) for v in values]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"collate: {key!r} has different shapes across the batch {sorted(shapes)}; cannot stack")
        return torch.stack(tensors)
    if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
        return torch.tensor(values)
    return values


def collate(samples: Sequence[dict]) -> dict:
    """List of B pipeline outputs -> batch.

    Tensors of equal shape are stacked on a new dim 0 (``img`` -> (B, N, 3, H, W), matrices ->
    (B, N, 4, 4) or (B, 4, 4), ``depth_map``/``fg_map`` -> (B, N, h, w)); ``points``, boxes,
    labels, names and ``metas`` stay lists of B. Top-level so that DataLoader workers can pickle it.
    """
    if len(samples) == 0:
        raise ValueError("collate: empty batch")
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise TypeError(f"collate: batch entry {i} is {type(sample).__name__}, expected a results dict (a dropped sample?)")
    keys = list(samples[0])
    for i, sample in enumerate(samples[1:], start=1):
        if set(sample) != set(keys):
            raise KeyError(f"collate: batch entry {i} has keys {sorted(sample)}, entry 0 has {sorted(keys)}")
    batch = {}
    for key in keys:
        values = [s[key] for s in samples]
        if key in LIST_KEYS or key == "metas":
            batch[key] = [torch.as_tensor(v) if isinstance(v, np.ndarray) and key != "gt_names" else v for v in values]
        else:
            batch[key] = _stack(key, values)
    return batch
