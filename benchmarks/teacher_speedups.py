"""The distiller's exact speed-ups against their plain forms, interleaved in one process.

    python benchmarks/teacher_speedups.py [--root data/benchmark] [--threads 1] [--repeats 15]

Prints medians (ms) of: the teacher's forward with its BatchNorm folded and the lift structure
shared with the student (``fold_teacher_batchnorm: true``, the default) against the loaded teacher
as is with an ``nn.Conv2d`` as the LiDAR depth image's first layer (``OneChannelConv1x1`` now),
both after the student's camera lift (as in a training step); the LiDAR depth image projection
against its former form; the TiG keypoint sampler (``sample_box_keypoints``, a sparse bilinear
matrix with an ``index_add_`` backward) against ``grid_sample`` at lattices 8 and 24 (forward and
backward); the two relation terms (``gram_relation_loss``) against ``relation_loss`` on explicit
Gram matrices; and the whole TiG distillation step both ways. Variants alternate repeat by
repeat, so a machine's load changes both alike; two batches alternate, so that every call sees
new camera matrices as the steps of an epoch do.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmdet3d.apis.runner import build_dataset_from_config  # noqa: E402
from mmdet3d.datasets.pipelines.formatting import collate  # noqa: E402
from mmdet3d.models import build_model  # noqa: E402
from mmdet3d.models.distillers.losses.tig import (box_lattice_points, gram_relation_loss, relation_loss,  # noqa: E402
                                                  sample_box_keypoints)
from mmdet3d.models.layers import OneChannelConv1x1  # noqa: E402
from mmdet3d.models.vtransforms import PoolStructureCache, points_to_depth_image  # noqa: E402
from mmdet3d.utils.config import load_config  # noqa: E402
from step_cost import interleaved_times, training_step_call  # noqa: E402

TIG = "configs/synthetic/distill/tig/convfuser.yaml"


def grid_sample_keypoints(bev, boxes, bev_range, lattice, enlarge):
    """The former sampler: one zero-padded ``grid_sample`` over (B, K_max, M) slots."""
    batch_size, channels = bev.shape[:2]
    m, max_boxes = lattice * lattice, max(len(b) for b in boxes)
    x_min, y_min, x_max, y_max = bev_range
    grid = bev.new_full((batch_size, max_boxes, m, 2), 2.0)
    valid = torch.zeros(batch_size, max_boxes, dtype=torch.bool)
    for b, sample_boxes in enumerate(boxes):
        xy = box_lattice_points(sample_boxes.to(bev.dtype), lattice, enlarge)
        grid[b, : len(sample_boxes), :, 0] = 2 * (xy[..., 1] - y_min) / (y_max - y_min) - 1
        grid[b, : len(sample_boxes), :, 1] = 2 * (xy[..., 0] - x_min) / (x_max - x_min) - 1
        valid[b, : len(sample_boxes)] = True
    return F.grid_sample(bev, grid, align_corners=False).permute(0, 2, 1, 3)[valid]


def former_depth_image(points, lidar2image, img_aug_matrix, lidar_aug_matrix, image_size):
    """The former projection: homogeneous points through the inverse LiDAR augmentation, the
    camera and the full image augmentation matrices, then a boolean-indexed ``amin`` scatter."""
    batch_size, num_cams = lidar2image.shape[:2]
    image_h, image_w = (int(s) for s in image_size)
    depth = lidar2image.new_zeros(batch_size, num_cams * image_h * image_w)
    for b in range(batch_size):
        xyz = points[b][:, :3].to(lidar2image.dtype)
        homo = torch.cat([xyz, torch.ones_like(xyz[:, :1])], dim=1).t()
        cam = lidar2image[b] @ (torch.linalg.inv(lidar_aug_matrix[b]) @ homo)
        z = cam[:, 2]
        front = z > 1e-3
        safe_z = torch.where(front, z, torch.ones_like(z))
        aug = img_aug_matrix[b] @ torch.stack([cam[:, 0] / safe_z, cam[:, 1] / safe_z, z, torch.ones_like(z)], dim=1)
        col, row = torch.floor(aug[:, 0] + 0.5).long(), torch.floor(aug[:, 1] + 0.5).long()
        valid = front & (col >= 0) & (col < image_w) & (row >= 0) & (row < image_h)
        index = (torch.arange(num_cams)[:, None].expand_as(z) * image_h + row) * image_w + col
        depth[b].scatter_reduce_(0, index[valid], z[valid], reduce="amin", include_self=False)
    return depth.view(batch_size, num_cams, image_h, image_w)


def plain_first_layer(model) -> None:
    """Swap the teacher's ``OneChannelConv1x1`` layers back to ``nn.Conv2d`` with the same weights."""
    for module in model.teacher.modules():
        for name, child in module.named_children():
            if isinstance(child, OneChannelConv1x1):
                conv = nn.Conv2d(1, child.out_channels, 1, bias=child.bias is not None)
                conv.load_state_dict(child.state_dict())
                setattr(module, name, conv.requires_grad_(False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/benchmark")
    parser.add_argument("--teacher-checkpoint", default="runs/benchmark/synthetic_det_centerhead_second_camera+lidar_convfuser/latest.pth")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = args.teacher_checkpoint if Path(args.teacher_checkpoint).is_file() else "null"
    cfg = load_config(str(ROOT / TIG), ["--dataset_root", args.root.rstrip("/") + "/", "--model.teacher_checkpoint", checkpoint])
    dataset = build_dataset_from_config(cfg, "train")
    size = cfg["data"]["samples_per_gpu"]
    # two batches taken in turn: each call sees new camera matrices, as every step of an epoch does
    batches = [collate([dataset[i] for i in range(start, start + size)]) for start in (0, size)]
    batch = batches[0]
    models = {}
    for name, fold in (("fast", True), ("plain", False)):
        model_cfg = copy.deepcopy(cfg["model"])
        model_cfg["fold_teacher_batchnorm"] = fold
        torch.manual_seed(0)
        models[name] = build_model(model_cfg).train()
    # the plain teacher builds its own splat structure, as before the sharing, and convolves its
    # one-channel depth image with nn.Conv2d
    models["plain"].teacher.encoders["camera"]["vtransform"].structure_cache = PoolStructureCache()
    plain_first_layer(models["plain"])

    def teacher_forward(model):
        order = itertools.cycle(batches)

        def run():
            with torch.no_grad():
                current = next(order)
                model.student.extract_camera_features(current)  # fills the shared structure, as a step does
                model.teacher.extract_features(current)
        return run

    bev = models["fast"].student.forward_features(batch)[0]["decoder_out"].detach().requires_grad_()
    bev_range = models["fast"].context["bev_range"]

    def sampler(fn, lattice):
        return lambda: fn(bev, batch["gt_bboxes_3d"], bev_range, lattice, 1.6).square().sum().backward()

    def depth_image(fn):
        order = itertools.cycle(batches)

        def run():
            current = next(order)
            fn(current["points"], current["lidar2image"], current["img_aug_matrix"], current["lidar_aug_matrix"], cfg["image_size"])
        return run

    torch.manual_seed(0)
    points_s = torch.randn(len(batch["img"]) * 40, 128, 64).relu()
    points_t = torch.randn_like(points_s).relu()

    def relations(fused):
        def run():
            ps = points_s.clone().requires_grad_()
            for s, t in ((ps, points_t), (ps.transpose(1, 2), points_t.transpose(1, 2))):  # channel, keypoint
                if fused:
                    gram_relation_loss(s, t).backward(retain_graph=True)
                else:
                    relation_loss(s @ s.transpose(1, 2), t @ t.transpose(1, 2)).backward(retain_graph=True)
        return run

    rows = [("teacher forward after the student lift", teacher_forward(models["fast"]), teacher_forward(models["plain"])),
            ("LiDAR depth image projection (batch)", depth_image(points_to_depth_image), depth_image(former_depth_image))]
    rows += [(f"TiG keypoint sampler, lattice {s} (fwd + bwd)", sampler(sample_box_keypoints, s), sampler(grid_sample_keypoints, s))
             for s in (8, 24)]
    rows.append(("TiG relation terms, 80 boxes x 128 channels x 64 keypoints (fwd + bwd)", relations(True), relations(False)))
    rows.append(("TiG distillation step (fwd + bwd)", training_step_call(models["fast"], batches),
                 training_step_call(models["plain"], batches)))
    times = interleaved_times({(i, v): fn for i, (_, *variants) in enumerate(rows) for v, fn in enumerate(variants)}, args.repeats)
    print(f"{args.threads} thread(s), median of {args.repeats}; batch {len(batch['img'])}; "
          f"{models['fast'].teacher_batchnorms_folded} teacher BatchNorm layers folded\n")
    print("| what | now (ms) | before (ms) | now / before |\n|---|---|---|---|")
    for i, (name, _, _) in enumerate(rows):
        now, before = (statistics.median(times[i, v]) * 1e3 for v in (0, 1))
        print(f"| {name} | {now:.1f} | {before:.1f} | {now / before:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
