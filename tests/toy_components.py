"""A tiny detector and dataset with the project's interfaces, for testing the tools quickly.

``ToyDataset`` yields batches in the format of docs/data_format.md (cameras, points, boxes,
matrices omitted) and scores predictions with ``evaluate(results, out_dir)``. ``ToyDetector``
has the BEVFusion stage names (``encoders.camera.backbone/neck/vtransform``, ``encoders.lidar``,
``fuser``, ``decoder``, ``heads``) so the benchmark hooks find them. Each object's centre is
visible both as a bright spot in the images and as a point cluster, so the loss goes down.
Configs: ``tests/configs/toy/``; the tools import this module through ``custom_imports``.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from mmdet3d.datasets.builder import DATASETS
from mmdet3d.models.builder import FUSION_MODELS
from mmdet3d.utils import distributed as dist

BEV_RANGE = 10.0  # metres: the BEV grid spans [-10, 10) in x and y


class EpochRecorder:
    """A pipeline step that only remembers the epoch it was given (tests ``set_epoch``)."""

    def __init__(self) -> None:
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, results: dict) -> dict:
        results["epoch"] = self.epoch
        return results


@DATASETS.register_module()
class ToyDataset(Dataset):
    def __init__(self, num_samples: int = 8, num_cameras: int = 2, image_size: Sequence[int] = (16, 16), seed: int = 0, test_mode: bool = False, jitter: float = 0.0):
        self.num_samples = int(num_samples)
        self.num_cameras = int(num_cameras)
        self.image_size = tuple(int(s) for s in image_size)
        self.seed = int(seed)
        self.test_mode = test_mode
        self.jitter = float(jitter)  # training augmentation: global np.random noise on the points
        self.pipeline = [EpochRecorder()]
        rng = np.random.default_rng(self.seed)
        self.centres = rng.uniform(-0.8 * BEV_RANGE, 0.8 * BEV_RANGE, size=(self.num_samples, 2)).astype(np.float32)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(self.seed * 7919 + index)
        cx, cy = (float(v) for v in self.centres[index])
        h, w = self.image_size
        img = rng.normal(0.0, 0.1, size=(self.num_cameras, 3, h, w)).astype(np.float32)
        u = int((cx + BEV_RANGE) / (2 * BEV_RANGE) * w)
        v = int((cy + BEV_RANGE) / (2 * BEV_RANGE) * h)
        img[:, 0, max(v - 1, 0) : v + 2, max(u - 1, 0) : u + 2] += 1.0
        n_obj, n_bg = 10 + index % 5, 20
        obj = np.stack([rng.normal(cx, 0.3, n_obj), rng.normal(cy, 0.3, n_obj)], axis=1)
        bg = rng.uniform(-BEV_RANGE, BEV_RANGE, size=(n_bg, 2))
        xy = np.concatenate([obj, bg]).astype(np.float32)
        if self.jitter > 0 and not self.test_mode:
            xy = xy + np.random.normal(0.0, self.jitter, size=xy.shape).astype(np.float32)
        points = np.concatenate([xy, np.zeros((len(xy), 3), np.float32)], axis=1)
        box = np.array([[cx, cy, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]], dtype=np.float32)
        results = {
            "img": torch.from_numpy(img),
            "points": torch.from_numpy(points),
            "gt_bboxes_3d": torch.from_numpy(box),
            "gt_labels_3d": torch.zeros(1, dtype=torch.int64),
            "metas": {"token": f"toy-{index:04d}", "index": index},
        }
        for step in self.pipeline:
            results = step(results)
        return results

    @staticmethod
    def collate_fn(samples: list[dict]) -> dict:
        return {
            "img": torch.stack([s["img"] for s in samples]),
            "points": [s["points"] for s in samples],
            "gt_bboxes_3d": [s["gt_bboxes_3d"] for s in samples],
            "gt_labels_3d": [s["gt_labels_3d"] for s in samples],
            "metas": [s["metas"] for s in samples],
        }

    def evaluate(self, results: Sequence[Mapping], out_dir: str | None = None, metric: str = "bbox") -> dict:
        if len(results) != len(self):
            raise ValueError(f"{len(results)} results for {len(self)} samples")
        errors = []
        for index, result in enumerate(results):
            centre = result["boxes_3d"][0, :2].double().numpy()
            errors.append(float(np.linalg.norm(centre - self.centres[index])))
        errors_np = np.array(errors)
        metrics = {
            "mAP": float((errors_np < 2.0).mean()),
            "NDS": float((1.0 / (1.0 + errors_np)).mean()),
            "mean_centre_error": float(errors_np.mean()),
            "num_samples": len(results),
        }
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "metrics_summary.json"), "w") as f:
                json.dump({**metrics, "errors": errors}, f)
        return metrics


def _bev_occupancy(points: list[torch.Tensor], grid: int) -> torch.Tensor:
    """(B, 1, X, Y) point counts per BEV cell, x along dim 2 and y along dim 3."""
    out = points[0].new_zeros(len(points), 1, grid, grid)
    for b, p in enumerate(points):
        ij = ((p[:, :2] + BEV_RANGE) / (2 * BEV_RANGE) * grid).long().clamp(0, grid - 1)
        out[b, 0].index_put_((ij[:, 0], ij[:, 1]), torch.ones(len(p), dtype=out.dtype, device=out.device), accumulate=True)
    return out


@FUSION_MODELS.register_module()
class ToyDetector(nn.Module):
    """Cameras + points -> BEV -> centre regression of one object per sample."""

    def __init__(self, channels: int = 8, grid: int = 8, use_bn: bool = False, nan_at_call: int | None = None,
                 hang_at_call: int | None = None, hang_rank: int = 1):
        super().__init__()
        self.grid = grid
        self.nan_at_call = nan_at_call
        self.hang_at_call, self.hang_rank = hang_at_call, hang_rank  # a rank that stops responding
        self._train_calls = 0
        norm = (lambda c: nn.BatchNorm2d(c)) if use_bn else (lambda c: nn.Identity())
        self.encoders = nn.ModuleDict(
            {
                "camera": nn.ModuleDict(
                    {
                        "backbone": nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), norm(channels), nn.ReLU()),
                        "neck": nn.Conv2d(channels, channels, 1),
                        "vtransform": nn.Conv2d(channels, channels, 1),
                    }
                ),
                "lidar": nn.ModuleDict({"backbone": nn.Conv2d(1, channels, 3, padding=1)}),
            }
        )
        self.fuser = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.ReLU())
        self.decoder = nn.ModuleDict({"backbone": nn.Conv2d(channels, channels, 3, padding=1), "neck": nn.Identity()})
        self.heads = nn.ModuleDict({"object": nn.Linear(channels * grid * grid, 2)})

    def extract_camera(self, img: torch.Tensor) -> torch.Tensor:
        b, n = img.shape[:2]
        x = self.encoders["camera"]["backbone"](img.flatten(0, 1))  # (B, N, 3, H, W) -> (B*N, 3, H, W)
        x = self.encoders["camera"]["neck"](x)
        x = F.adaptive_avg_pool2d(x, self.grid)
        x = x.view(b, n, *x.shape[1:]).mean(dim=1).transpose(-1, -2)  # image (v, u) -> BEV (x, y)
        return self.encoders["camera"]["vtransform"](x)

    def forward(self, batch: Mapping[str, Any]) -> Any:
        cam = self.extract_camera(batch["img"])
        lidar = self.encoders["lidar"]["backbone"](_bev_occupancy(batch["points"], self.grid))
        fused = self.fuser(torch.cat([cam, lidar], dim=1))
        bev = self.decoder["neck"](self.decoder["backbone"](fused))
        centre = self.heads["object"](bev.flatten(1)) * BEV_RANGE  # (B, 2)
        if self.training:
            target = torch.stack([boxes[0, :2] for boxes in batch["gt_bboxes_3d"]])
            loss = F.smooth_l1_loss(centre, target)
            self._train_calls += 1
            if self.hang_at_call is not None and self._train_calls >= self.hang_at_call and dist.get_rank() == self.hang_rank:
                time.sleep(3600)
            if self.nan_at_call is not None and self._train_calls >= self.nan_at_call:
                loss = loss * float("nan")
            return {"loss/object/centre": loss, "stats/centre_abs": centre.detach().abs().mean()}
        outputs = []
        for b in range(centre.shape[0]):
            box = centre.new_zeros(1, 9)
            box[0, :2] = centre[b]
            box[0, 3:6] = torch.tensor([4.0, 2.0, 1.5])
            outputs.append({"boxes_3d": box, "scores_3d": centre.new_ones(1), "labels_3d": torch.zeros(1, dtype=torch.long)})
        return outputs
