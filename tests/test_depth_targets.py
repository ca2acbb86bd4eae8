"""DepthTargets against a slow per-point reference, and on the real keyframe through the pipeline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmdet3d.core.bbox import points_in_boxes
from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.datasets.pipelines import (
    Compose,
    DepthTargets,
    GlobalRotScaleTrans,
    ImageAug3D,
    ImageNormalize,
    RandomFlip3D,
    collate,
)
from mmdet3d.datasets.pipelines.depth_targets import nearest_point_per_cell, nearest_point_per_cell_reference
from keyframe_paths import KEYFRAME, PKL


def _scene(seed):
    """Three cameras (front, left, back) of a 640x360 pinhole rig, keyframe and sweep points, boxes."""
    rng = np.random.default_rng(seed)
    k = np.eye(4)
    k[:3, :3] = [[300, 0, 319.5], [0, 300, 179.5], [0, 0, 1]]
    look = {  # rows: camera x (right), y (down), z (forward) in LiDAR axes
        "front": [[0, -1, 0], [0, 0, -1], [1, 0, 0]],
        "left": [[1, 0, 0], [0, 0, -1], [0, 1, 0]],
        "back": [[0, 1, 0], [0, 0, -1], [-1, 0, 0]],
    }
    lidar2image = []
    for rows in look.values():
        m = np.eye(4)
        m[:3, :3] = rows
        m[:3, 3] = rng.uniform(-0.5, 0.5, 3)
        lidar2image.append(k @ m)
    boxes = np.array([[9, 0.5, 0, 4, 2, 1.6, 0.3, 0, 0], [2, 8, -0.5, 1, 1, 1.8, 1.0, 0, 0], [-15, -2, 0.5, 8, 3, 3, -0.4, 0, 0],
                      [9.5, 0.8, 0.2, 1, 1, 1, 0, 0, 0]])  # the last one overlaps the first: first index wins
    xyz = [rng.uniform([-40, -40, -2], [40, 40, 3], (3000, 3))]
    for box in boxes:
        local = rng.uniform(-0.5, 0.5, (150, 3)) * box[3:6]
        c, s = math.cos(box[6]), math.sin(box[6])
        xyz.append(local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + box[:3])
    xyz = np.concatenate(xyz)
    keyframe = np.concatenate([xyz, rng.uniform(0, 1, (len(xyz), 1)), np.zeros((len(xyz), 1))], 1)
    sweep = keyframe[:500].copy()
    sweep[:, :3] *= 0.3  # nearer than the keyframe points along the same rays: must be ignored
    sweep[:, 4] = 0.05
    points = np.concatenate([keyframe, keyframe[:20], sweep])  # duplicates: ties keep the first
    return {
        "token": f"scene{seed}",
        "img": [np.zeros((360, 640, 3), np.uint8) for _ in look],
        "points": torch.tensor(points, dtype=torch.float32),
        "lidar2image": np.stack(lidar2image).astype(np.float32),
        "gt_bboxes_3d": torch.tensor(boxes, dtype=torch.float32),
        "gt_labels_3d": torch.zeros(len(boxes), dtype=torch.int64),
    }


def _reference(results, downsample, dbound):
    """One point at a time: keyframe only, inv(lidar_aug) -> lidar2image -> img_aug, keep the nearest."""
    images = results["img"]
    height, width = (images.shape[-2], images.shape[-1]) if isinstance(images, torch.Tensor) else images[0].shape[:2]
    h, w = height // downsample, width // downsample
    lidar2image = np.asarray(results["lidar2image"], np.float64)
    num_cams = len(lidar2image)
    img_aug = np.asarray(results.get("img_aug_matrix", np.tile(np.eye(4), (num_cams, 1, 1))), np.float64)
    inv_lidar_aug = np.linalg.inv(np.asarray(results.get("lidar_aug_matrix", np.eye(4)), np.float64))
    boxes = results["gt_bboxes_3d"].double().numpy()
    depth = np.zeros((num_cams, h, w))
    fg = np.zeros((num_cams, h, w), np.int64)
    for point in results["points"].double().numpy():
        if point[4] != 0:
            continue
        original = inv_lidar_aug @ np.append(point[:3], 1.0)
        box_id = 0
        for k, box in enumerate(boxes):
            c, s = math.cos(box[6]), math.sin(box[6])
            dx, dy, dz = point[:3] - box[:3]
            if abs(c * dx + s * dy) <= box[3] / 2 and abs(-s * dx + c * dy) <= box[4] / 2 and abs(dz) <= box[5] / 2:
                box_id = k + 1
                break
        for n in range(num_cams):
            cam = lidar2image[n] @ original
            d = cam[2]
            if d <= 1e-3 or (dbound is not None and not dbound[0] <= d < dbound[1]):
                continue
            u, v = (img_aug[n] @ np.array([cam[0] / d, cam[1] / d, d, 1.0]))[:2] + 0.5  # pixel edges
            if not (0 <= u < w * downsample and 0 <= v < h * downsample):
                continue
            row, col = int(v // downsample), int(u // downsample)
            if depth[n, row, col] == 0 or d < depth[n, row, col]:
                depth[n, row, col], fg[n, row, col] = d, box_id
    return depth, fg


def test_nearest_point_per_cell_matches_reference():
    rng = np.random.default_rng(0)
    cell = rng.integers(0, 50, 400)
    depth = rng.integers(1, 20, 400).astype(np.float64)  # many ties
    fast, slow = nearest_point_per_cell(cell, depth), nearest_point_per_cell_reference(cell, depth)
    np.testing.assert_array_equal(fast, slow)
    assert len(fast) == len(np.unique(cell))
    np.testing.assert_array_equal(nearest_point_per_cell(np.array([3, 3, 3]), np.array([2.0, 1.0, 1.0])), [1])


@pytest.mark.parametrize("case", ["plain", "augmented", "dbound_stride4_normalized"])
def test_depth_targets_match_slow_reference(case):
    results = _scene(seed={"plain": 0, "augmented": 1, "dbound_stride4_normalized": 2}[case])
    downsample, dbound = 8, None
    if case != "plain":
        np.random.seed(5)
        results = ImageAug3D(final_dim=(256, 448), resize_lim=(0.7, 0.9), bot_pct_lim=(0, 0.1), rot_lim=(-10, 10), rand_flip=True)(results)
        results = GlobalRotScaleTrans(resize_lim=(0.9, 1.1), rot_lim=(-0.7, 0.7), trans_lim=0.5)(results)
        results = RandomFlip3D(flip_ratio=0.5)(results)
    if case == "dbound_stride4_normalized":
        results = ImageNormalize()(results)
        downsample, dbound = 4, (2.0, 30.0, 0.5)
    out = DepthTargets(downsample=downsample, dbound=dbound)(results)
    depth, fg = _reference(results, downsample, dbound)
    assert out["depth_map"].dtype == torch.float32 and out["fg_map"].dtype == torch.int64
    assert out["depth_map"].shape == depth.shape
    assert (depth > 0).sum() > 200 and (fg > 0).sum() > 20 and fg.max() >= 3
    np.testing.assert_array_equal(out["depth_map"].numpy() > 0, depth > 0)
    np.testing.assert_allclose(out["depth_map"].numpy(), depth, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["fg_map"].numpy(), fg)
    if dbound is not None:
        valid = depth[depth > 0]
        assert valid.min() >= 2.0 and valid.max() < 30.0


def test_depth_targets_empty_boxes_and_points():
    results = _scene(0)
    results["gt_bboxes_3d"] = torch.zeros((0, 9))
    out = DepthTargets()(dict(results))
    assert (out["fg_map"] == 0).all() and (out["depth_map"] > 0).any()
    results["points"] = torch.zeros((0, 5))
    out = DepthTargets()(dict(results))
    assert out["depth_map"].shape == (3, 45, 80) and (out["depth_map"] == 0).all()


def test_real_keyframe_depth_agrees_with_lidar():
    if not PKL.is_file():
        pytest.skip(f"real nuScenes keyframe not found at {KEYFRAME}")
    pipeline = Compose([
        dict(type="LoadMultiViewImageFromFiles"),
        dict(type="LoadPointsFromFile", coord_type="LIDAR", load_dim=5, use_dim=5),
        dict(type="LoadAnnotations3D", with_bbox_3d=True, with_label_3d=True),
        dict(type="ImageAug3D", final_dim=[256, 704], resize_lim=[0.4, 0.5], bot_pct_lim=[0.0, 0.1], rot_lim=[-5.4, 5.4], rand_flip=True),
        dict(type="GlobalRotScaleTrans", resize_lim=[0.9, 1.1], rot_lim=[-0.78, 0.78], trans_lim=0.5, is_train=True),
        dict(type="DepthTargets", downsample=8),
        dict(type="ImageNormalize"),
        dict(type="DefaultFormatBundle3D"),
        dict(type="Collect3D", keys=["img", "points", "gt_bboxes_3d", "gt_labels_3d", "camera_intrinsics", "lidar2camera",
                                     "img_aug_matrix", "lidar_aug_matrix", "depth_map", "fg_map"]),
    ])
    dataset = NuScenesDataset(str(KEYFRAME), PKL.name, test_mode=True)
    data = dataset.get_data_info(0)
    original = np.fromfile(data["lidar_path"], dtype=np.float32).reshape(-1, 5)[:, :3].astype(np.float64)
    original_boxes = torch.from_numpy(data["ann_info"]["gt_bboxes_3d"]).double()
    np.random.seed(0)
    batch = collate([pipeline(data)])
    assert batch["img"].shape == (1, 6, 3, 256, 704) and batch["depth_map"].shape == (1, 6, 32, 88)
    depth_map, fg_map = batch["depth_map"][0].numpy(), batch["fg_map"][0].numpy()

    # Independent path: un-augmented points, camera frame via lidar2camera, pixels via the intrinsics.
    homog = np.concatenate([original, np.ones((len(original), 1))], 1)
    cam = np.einsum("nij,pj->npi", batch["lidar2camera"][0].double().numpy(), homog)  # (6, P, 4)
    z = cam[..., 2]
    pix = np.einsum("nij,npj->npi", batch["camera_intrinsics"][0].double().numpy()[:, :3, :3], cam[..., :3])
    uv = pix[..., :2] / np.maximum(z, 1e-6)[..., None]
    aug = batch["img_aug_matrix"][0].double().numpy()
    uv = np.einsum("nij,npj->npi", aug[:, :2, :2], uv) + aug[:, None, :2, 3] + 0.5  # pixel edges
    ok = (z > 1e-3) & (uv[..., 0] >= 0) & (uv[..., 0] < 704) & (uv[..., 1] >= 0) & (uv[..., 1] < 256)
    cam_idx, point_idx = np.nonzero(ok)
    cells = (cam_idx, (uv[..., 1][ok] // 8).astype(int), (uv[..., 0][ok] // 8).astype(int))
    expected = np.full((6, 32, 88), np.inf)
    np.minimum.at(expected, cells, z[ok])
    expected[np.isinf(expected)] = 0

    filled = (depth_map > 0) | (expected > 0)
    agree = np.isclose(depth_map, expected, rtol=1e-4, atol=1e-3)
    assert filled.sum() > 5000
    # Points within ~1e-4 px of a cell border may fall either side in float32: allow a handful.
    assert (~agree & filled).sum() <= 0.002 * filled.sum(), f"{(~agree & filled).sum()} of {filled.sum()} cells differ"
    assert depth_map.max() < 120 and depth_map[depth_map > 0].min() > 0.5

    # fg_map: the nearest point of a foreground cell lies inside the labelled (original-frame) box.
    fg_cells = np.argwhere((fg_map > 0) & agree)
    assert len(fg_cells) > 100
    hits = 0
    for n, r, c in fg_cells:
        nearest = point_idx[(cells[0] == n) & (cells[1] == r) & (cells[2] == c) & np.isclose(z[ok], depth_map[n, r, c], atol=1e-3)]
        box = original_boxes[fg_map[n, r, c] - 1][None]
        hits += bool(points_in_boxes(torch.from_numpy(original[nearest]), box, eps=1e-3).any())
    assert hits == len(fg_cells)
    bg_cells = np.argwhere((fg_map == 0) & (depth_map > 0) & agree)
    bg_points = [point_idx[(cells[0] == n) & (cells[1] == r) & (cells[2] == c) & np.isclose(z[ok], depth_map[n, r, c], atol=1e-3)][0]
                 for n, r, c in bg_cells[:: max(1, len(bg_cells) // 500)]]
    assert not points_in_boxes(torch.from_numpy(original[bg_points]), original_boxes, eps=-1e-3).any()
