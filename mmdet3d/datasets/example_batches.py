"""Ready-made collated batches for model tests and benchmarks.

``make_batch``: a random batch as docs/data_format.md describes (a simple camera rig, ground
points plus points inside random boxes). Cameras sit 1.6 m above the LiDAR origin, evenly spaced
in yaw and looking outward; the frames follow docs/data_format.md (LiDAR x forward, y left, z up;
camera x right, y down, z forward). ``keyframe_batch``: the first sample of an info folder (e.g.
the real nuScenes keyframe) through a config's test pipeline. ``blob_batch``: a camera-only scene
that only a correctly wired lift can learn (objects drawn as blobs that carry their depth, under
random image flips and random BEV rotations and flips).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.datasets.nuscenes_utils import NUSCENES_CLASSES
from mmdet3d.datasets.pipelines.formatting import collate

__all__ = ["CLASSES", "camera_rig", "random_boxes", "random_points", "make_batch", "add_depth_targets", "blob_batch",
           "keyframe_batch"]

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


def blob_batch(generator: torch.Generator, batch_size: int = 2, num_cams: int = 4, image_size=(64, 96), num_boxes: int = 3,
               extent: float = 10.0) -> tuple[dict, list[torch.Tensor]]:
    """A camera-only batch and its boxes (B lists of (M, 9)) in the un-augmented LiDAR frame.

    ``num_boxes`` cars (label 0, yaw 0) per sample lie 3 m to ``extent`` m from the origin of a
    ``camera_rig`` of 100-degree cameras. Each image shows every box centre in front of its
    camera as a Gaussian blob (sigma 3 px) in channel 0, and the same blob times depth / 10 m in
    channel 1. Each camera's image is flipped left-right with probability 0.5 (``img_aug_matrix``);
    each sample is rotated about z by a uniform angle and mirrored in y with probability 0.5
    (``lidar_aug_matrix``; ``gt_bboxes_3d`` are the augmented boxes). No points.
    """
    height, width = image_size
    batch = make_batch(batch_size=batch_size, num_cams=num_cams, image_size=image_size, num_boxes=(0,), num_points=0)
    intrinsics, camera2lidar, lidar2camera, lidar2image = camera_rig(num_cams, image_size, fov_degrees=100.0)
    for key, value in (("camera_intrinsics", intrinsics), ("camera2lidar", camera2lidar), ("camera2ego", camera2lidar),
                       ("lidar2camera", lidar2camera), ("lidar2image", lidar2image)):
        batch[key] = value.expand(batch_size, *value.shape).clone()
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    images = torch.zeros(batch_size, num_cams, 3, height, width)
    boxes, augmented = [], []
    for b in range(batch_size):
        u = torch.rand(num_boxes, 2, generator=generator)
        radius, angle = 3.0 + u[:, 0] * (extent - 3.0), u[:, 1] * 2 * math.pi
        box = torch.zeros(num_boxes, 9)
        box[:, 0], box[:, 1], box[:, 2] = radius * angle.cos(), radius * angle.sin(), -0.8
        box[:, 3:6] = torch.tensor([4.0, 1.8, 1.6])
        boxes.append(box)
        for n in range(num_cams):
            if torch.rand(1, generator=generator).item() < 0.5:  # flip left-right: u -> W - 1 - u
                batch["img_aug_matrix"][b, n, 0, 0], batch["img_aug_matrix"][b, n, 0, 3] = -1.0, width - 1.0
            camera = torch.cat([box[:, :3], torch.ones(num_boxes, 1)], dim=1) @ lidar2image[n].T  # (M, 4)
            for centre in camera[camera[:, 2] > 0.5]:
                pixel = batch["img_aug_matrix"][b, n] @ torch.stack([centre[0] / centre[2], centre[1] / centre[2], centre[2], centre.new_ones(())])
                blob = torch.exp(-((cols - pixel[0]) ** 2 + (rows - pixel[1]) ** 2) / (2 * 3.0**2))
                images[b, n, 0] = torch.maximum(images[b, n, 0], blob)
                images[b, n, 1] = torch.maximum(images[b, n, 1], blob * centre[2] / 10.0)
        theta = torch.rand(1, generator=generator).item() * 2 * math.pi
        mirror = -1.0 if torch.rand(1, generator=generator).item() < 0.5 else 1.0
        linear = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0], [mirror * math.sin(theta), mirror * math.cos(theta), 0.0],
                               [0.0, 0.0, 1.0]])
        batch["lidar_aug_matrix"][b, :3, :3] = linear
        moved = box.clone()
        moved[:, :3] = box[:, :3] @ linear.T
        moved[:, 6] = mirror * theta  # yaw 0 turned by theta, then mirrored in y
        augmented.append(moved)
    batch.update(img=images, gt_bboxes_3d=augmented, gt_labels_3d=[torch.zeros(num_boxes, dtype=torch.long)] * batch_size,
                 points=[torch.zeros(0, 5)] * batch_size)
    return batch, boxes


def keyframe_batch(cfg: dict, keyframe: str | Path, batch_size: int = 1, test_mode: bool = True) -> dict | None:
    """The first sample of the info pkl in folder ``keyframe`` through ``cfg``'s test pipeline,
    repeated ``batch_size`` times and collated; None when ``keyframe`` holds no info pkl."""
    pkls = sorted(Path(keyframe).glob("*.pkl")) if Path(keyframe).is_dir() else []
    if not pkls:
        return None
    dataset = NuScenesDataset(str(keyframe), pkls[0].name, pipeline=cfg["test_pipeline"],
                              object_classes=cfg["object_classes"], test_mode=test_mode)
    return collate([dataset[0]] * batch_size)
