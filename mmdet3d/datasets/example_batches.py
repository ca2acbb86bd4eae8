"""Ready-made collated batches for model tests and benchmarks.

``make_batch``: a random batch as docs/data_format.md describes (a simple camera rig, ground
points plus points inside random boxes). Cameras sit 1.6 m above the LiDAR origin, evenly spaced
in yaw and looking outward; the frames follow docs/data_format.md (LiDAR x forward, y left, z up;
camera x right, y down, z forward). ``keyframe_batch``: the first sample of an info folder (e.g.
the real nuScenes keyframe) through a config's test pipeline.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.datasets.nuscenes_utils import NUSCENES_CLASSES
from mmdet3d.datasets.pipelines.formatting import collate

__all__ = ["CLASSES", "camera_rig", "random_boxes", "random_points", "make_batch", "add_depth_targets", "keyframe_batch"]

CLASSES = list(NUSCENES_CLASSES)


def camera_rig(num_cams: int, image_size: tuple[int, int], fov_degrees: float = 80.0):
    """-> camera_intrinsics, camera2lidar, lidar2camera, lidar2image, each (N, 4, 4) float32."""
    height, width = image_size
    focal = (width / 2) / math.tan(math.radians(fov_degrees) / 2)
    intrinsics = torch.eye(4)
    intrinsics[0, 0] = intrinsics[1, 1] = focal
    intrinsics[0, 2], intrinsics[1, 2] = (width - 1) / 2, (height - 1) / 2
    camera2lidar = []
    for i in range(num_cams):
        theta = 2 * math.pi * i / num_cams
        m = torch.eye(4)
        # columns: camera x (right), y (down), z (forward) in the LiDAR frame
        m[:3, 0] = torch.tensor([math.sin(theta), -math.cos(theta), 0.0])
        m[:3, 1] = torch.tensor([0.0, 0.0, -1.0])
        m[:3, 2] = torch.tensor([math.cos(theta), math.sin(theta), 0.0])
        m[:3, 3] = torch.tensor([0.0, 0.0, 1.6])
        camera2lidar.append(m)
    camera2lidar = torch.stack(camera2lidar)
    lidar2camera = torch.linalg.inv(camera2lidar)
    intrinsics = intrinsics.expand(num_cams, 4, 4).clone()
    return intrinsics, camera2lidar, lidar2camera, intrinsics @ lidar2camera


def random_boxes(num_boxes: int, extent: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 9) gravity-centre boxes within ``extent`` metres of the origin and (M,) labels."""
    if num_boxes == 0:
        return torch.zeros(0, 9), torch.zeros(0, dtype=torch.long)
    u = torch.rand(num_boxes, 9, generator=generator)
    sizes = torch.tensor([[4.5, 1.9, 1.6]]) * (0.6 + 0.8 * u[:, 3:6])
    xy = (u[:, :2] * 2 - 1) * extent
    z = sizes[:, 2:3] / 2 - 1.8
    yaw = (u[:, 6:7] * 2 - 1) * math.pi
    velocity = (u[:, 7:9] * 2 - 1) * 3
    labels = torch.randint(0, len(CLASSES), (num_boxes,), generator=generator)
    return torch.cat([xy, z, sizes, yaw, velocity], dim=1), labels


def random_points(boxes: torch.Tensor, num_points: int, extent: float, generator: torch.Generator) -> torch.Tensor:
    """(P, 5) points ``(x, y, z, intensity, time_lag)``: ground plane plus points inside the boxes."""
    ground = (torch.rand(num_points, 2, generator=generator) * 2 - 1) * extent
    ground = torch.cat([ground, torch.full((num_points, 1), -1.8)], dim=1)
    parts = [ground]
    for box in boxes:
        local = (torch.rand(64, 3, generator=generator) - 0.5) * box[3:6]
        c, s = math.cos(box[6]), math.sin(box[6])
        rotated = torch.stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]], 1)
        parts.append(rotated + box[:3])
    xyz = torch.cat(parts)
    extras = torch.rand(len(xyz), 2, generator=generator) * torch.tensor([1.0, 0.0])
    return torch.cat([xyz, extras], dim=1)


def make_batch(batch_size: int = 2, num_cams: int = 3, image_size=(64, 96), num_boxes=(3, 0), extent: float = 12.0,
               num_points: int = 2000, seed: int = 0) -> dict:
    """A collated batch as docs/data_format.md describes; ``num_boxes[b]`` GT boxes in sample b."""
    generator = torch.Generator().manual_seed(seed)
    intrinsics, camera2lidar, lidar2camera, lidar2image = camera_rig(num_cams, image_size)
    boxes, labels, points = [], [], []
    for b in range(batch_size):
        box, label = random_boxes(num_boxes[b % len(num_boxes)], extent * 0.8, generator)
        boxes.append(box)
        labels.append(label)
        points.append(random_points(box, num_points, extent, generator))

    def per_camera(m):
        return m.expand(batch_size, *m.shape).clone()

    return {
        "img": torch.randn(batch_size, num_cams, 3, *image_size, generator=generator),
        "points": points,
        "gt_bboxes_3d": boxes,
        "gt_labels_3d": labels,
        "camera_intrinsics": per_camera(intrinsics),
        "camera2lidar": per_camera(camera2lidar),
        "lidar2camera": per_camera(lidar2camera),
        "lidar2image": per_camera(lidar2image),
        "camera2ego": per_camera(camera2lidar),
        "img_aug_matrix": per_camera(torch.eye(4).expand(num_cams, 4, 4)),
        "lidar_aug_matrix": torch.eye(4).expand(batch_size, 4, 4).clone(),
        "lidar2ego": torch.eye(4).expand(batch_size, 4, 4).clone(),
        "ego2global": torch.eye(4).expand(batch_size, 4, 4).clone(),
        "metas": [{"token": f"sample{b}"} for b in range(batch_size)],
    }


def add_depth_targets(batch: dict, downsample: int, dbound=None) -> dict:
    """Adds ``depth_map`` / ``fg_map`` (B, N, h, w) to a collated batch with the ``DepthTargets``
    pipeline step, per sample, from its points, cameras and boxes."""
    from mmdet3d.datasets.pipelines.depth_targets import DepthTargets

    targets = DepthTargets(downsample=downsample, dbound=dbound)
    maps = [targets({"points": batch["points"][b], "img": batch["img"][b], "lidar2image": batch["lidar2image"][b].numpy(),
                     "img_aug_matrix": batch["img_aug_matrix"][b].numpy(),
                     "lidar_aug_matrix": batch["lidar_aug_matrix"][b].numpy(), "gt_bboxes_3d": batch["gt_bboxes_3d"][b]})
            for b in range(len(batch["img"]))]
    batch["depth_map"] = torch.stack([m["depth_map"] for m in maps])
    batch["fg_map"] = torch.stack([m["fg_map"] for m in maps])
    return batch


def keyframe_batch(cfg: dict, keyframe: str | Path, batch_size: int = 1, test_mode: bool = True) -> dict | None:
    """The first sample of the info pkl in folder ``keyframe`` through ``cfg``'s test pipeline,
    repeated ``batch_size`` times and collated; None when ``keyframe`` holds no info pkl."""
    pkls = sorted(Path(keyframe).glob("*.pkl")) if Path(keyframe).is_dir() else []
    if not pkls:
        return None
    dataset = NuScenesDataset(str(keyframe), pkls[0].name, pipeline=cfg["test_pipeline"],
                              object_classes=cfg["object_classes"], test_mode=test_mode)
    return collate([dataset[0]] * batch_size)
