"""Image and LiDAR augmentations stay consistent with the matrices they record.

Projecting augmented points with ``img_aug_matrix @ lidar2image @ inv(lidar_aug_matrix)`` must land
where the original points project in the original image, moved by the sampled image
augmentation; the augmented pixels must really be where ``img_aug_matrix`` says; and boxes
keep their points.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmdet3d.core.bbox import box_corners, points_in_boxes
from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.datasets.pipelines import GlobalRotScaleTrans, ImageAug3D, LoadAnnotations3D, LoadPointsFromFile, RandomFlip3D
from keyframe_paths import KEYFRAME, PKL


def _synthetic_sample(seed=0):
    """Two 800x450 pinhole cameras (front, right), random points and three boxes filled with points."""
    rng = np.random.default_rng(seed)
    k = np.eye(4)
    k[:3, :3] = [[400, 0, 399.5], [0, 400, 224.5], [0, 0, 1]]
    front = np.array([[0, -1, 0, 0.1], [0, 0, -1, 0.3], [1, 0, 0, -1.5], [0, 0, 0, 1]], dtype=np.float64)
    right = np.array([[-1, 0, 0, 0.2], [0, 0, -1, 0.3], [0, -1, 0, -0.8], [0, 0, 0, 1]], dtype=np.float64)
    lidar2camera = np.stack([front, right])
    boxes = np.array([[12, 1, 0, 4, 2, 1.6, 0.4, 2, 0], [-3, -9, 0.2, 1, 0.8, 1.8, -1.2, 0, 1], [20, -6, -0.3, 6, 2.5, 3, 2.8, -1, 0.5]])
    inside = []
    for box in boxes:
        local = rng.uniform(-0.45, 0.45, (80, 3)) * box[3:6]
        c, s = math.cos(box[6]), math.sin(box[6])
        inside.append(local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + box[:3])
    xyz = np.concatenate([rng.uniform([-30, -30, -2], [30, 30, 3], (600, 3)), *inside])
    points = np.concatenate([xyz, rng.uniform(0, 1, (len(xyz), 1)), np.zeros((len(xyz), 1))], 1)
    return {
        "token": "synthetic",
        "img": [rng.integers(0, 255, (450, 800, 3), dtype=np.uint8) for _ in range(2)],
        "points": torch.tensor(points, dtype=torch.float32),
        "lidar2image": (k @ lidar2camera).astype(np.float32),
        "gt_bboxes_3d": torch.tensor(boxes, dtype=torch.float32),
        "gt_labels_3d": torch.tensor([0, 8, 1]),
    }


def _keyframe_sample():
    if not PKL.is_file():
        pytest.skip(f"real nuScenes keyframe not found at {KEYFRAME}")
    from mmdet3d.datasets.pipelines import LoadMultiViewImageFromFiles

    data = NuScenesDataset(str(KEYFRAME), PKL.name, test_mode=True).get_data_info(0)
    return LoadAnnotations3D()(LoadPointsFromFile()(LoadMultiViewImageFromFiles()(data)))


SOURCES = {"synthetic": _synthetic_sample, "keyframe": _keyframe_sample}


def _project(lidar2image, xyz):
    """(N, 4, 4), (P, 3) -> (N, P, 2) pixels and (N, P) depths, float64."""
    cam = np.einsum("nij,pj->npi", lidar2image.astype(np.float64), np.concatenate([xyz, np.ones((len(xyz), 1))], 1))
    return cam[..., :2] / cam[..., 2:3], cam[..., 2]


def _expected_pixel(uv, in_hw, final_hw, resize_dims, crop, flip, rotate):
    """Apply the sampled resize / crop / flip / rotation to pixel coordinates (pixel centres at integers)."""
    (h, w), (f_h, f_w), (new_w, new_h) = in_hw, final_hw, resize_dims
    u = (uv[..., 0] + 0.5) * new_w / w - 0.5 - crop[0]
    v = (uv[..., 1] + 0.5) * new_h / h - 0.5 - crop[1]
    if flip:
        u = (f_w - 1) - u
    a = math.radians(rotate)
    du, dv = u - (f_w - 1) / 2, v - (f_h - 1) / 2
    # Counter-clockwise as seen on screen (v points down).
    return np.stack([math.cos(a) * du + math.sin(a) * dv + (f_w - 1) / 2, -math.sin(a) * du + math.cos(a) * dv + (f_h - 1) / 2], -1)


def _record_params(aug):
    params = []
    sample = aug.sample_augmentation

    def recording(height, width):
        params.append(sample(height, width))
        return params[-1]

    aug.sample_augmentation = recording
    return params


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recorded_matrices_reproduce_projection(source, seed):
    results = SOURCES[source]()
    xyz0 = results["points"][:, :3].numpy().astype(np.float64)
    lidar2image = np.asarray(results["lidar2image"], np.float64)
    in_hw = [im.shape[:2] for im in results["img"]]
    uv0, d0 = _project(lidar2image, xyz0)

    np.random.seed(seed)
    image_aug = ImageAug3D(final_dim=(192, 352), resize_lim=(0.25, 0.6), bot_pct_lim=(0.0, 0.2), rot_lim=(-15, 15), rand_flip=True)
    params = _record_params(image_aug)
    results = image_aug(results)
    results = GlobalRotScaleTrans(resize_lim=(0.9, 1.1), rot_lim=(-0.8, 0.8), trans_lim=0.5)(results)
    results = RandomFlip3D(flip_ratio=0.5)(results)
    assert not np.allclose(results["lidar_aug_matrix"], np.eye(4))

    p_aug = np.concatenate([results["points"][:, :3].numpy().astype(np.float64), np.ones((len(xyz0), 1))], 1)
    back = p_aug @ np.linalg.inv(results["lidar_aug_matrix"].astype(np.float64)).T
    uv_rec, d_rec = _project(lidar2image, back[:, :3])
    img_aug = results["img_aug_matrix"].astype(np.float64)
    uvd1 = np.concatenate([uv_rec, d_rec[..., None], np.ones_like(d_rec[..., None])], -1)
    pix = np.einsum("nij,npj->npi", img_aug, uvd1)
    for cam, (resize, resize_dims, crop, flip, rotate) in enumerate(params):
        visible = d0[cam] > 1.0
        expected = _expected_pixel(uv0[cam, visible], in_hw[cam], (192, 352), resize_dims, crop, flip, rotate)
        in_image = (expected[:, 0] > -50) & (expected[:, 0] < 400) & (expected[:, 1] > -50) & (expected[:, 1] < 250)
        assert in_image.sum() > 20
        err = np.abs(pix[cam, visible, :2][in_image] - expected[in_image]).max()
        assert err < 1.0, f"camera {cam}: {err:.3f} px"
        np.testing.assert_allclose(pix[cam, visible, 2], d0[cam, visible], rtol=1e-4)


@pytest.mark.parametrize("rot_lim", [(0.0, 0.0), (-20.0, 20.0)])
def test_image_content_moves_as_img_aug_matrix_says(rot_lim):
    """White 5x5 markers in a black image: after ImageAug3D each marker's centroid lies within
    1 px of ``img_aug_matrix @ (u, v)``."""
    img = np.zeros((450, 800, 3), np.uint8)
    centres = np.array([(u, v) for u in range(30, 780, 50) for v in range(30, 430, 50)], dtype=np.float64)
    for u, v in centres.astype(int):
        img[v - 2:v + 3, u - 2:u + 3] = 255
    checked = 0
    for seed in range(4):
        np.random.seed(seed)
        out = ImageAug3D(final_dim=(192, 352), resize_lim=(0.45, 0.7), bot_pct_lim=(0.0, 0.2), rot_lim=rot_lim, rand_flip=True)({"img": [img]})
        aug = out["img"][0][..., 0].astype(np.float64)
        m = out["img_aug_matrix"][0].astype(np.float64)
        predicted = centres @ m[:2, :2].T + m[:2, 3]
        for pu, pv in predicted:
            if not (6 <= pu < 352 - 6 and 6 <= pv < 192 - 6):
                continue
            u0, v0 = int(round(pu)), int(round(pv))
            window = aug[v0 - 5:v0 + 6, u0 - 5:u0 + 6]
            assert window.sum() > 0, f"no marker near ({pu:.1f}, {pv:.1f})"
            vv, uu = np.mgrid[v0 - 5:v0 + 6, u0 - 5:u0 + 6]
            cu, cv = (window * uu).sum() / window.sum(), (window * vv).sum() / window.sum()
            assert math.hypot(cu - pu, cv - pv) < 1.0, f"seed {seed}: marker at ({cu:.2f}, {cv:.2f}), matrix says ({pu:.2f}, {pv:.2f})"
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_boxes_keep_their_points_through_3d_augmentation(source):
    results = SOURCES[source]()
    points0, boxes0 = results["points"].clone(), results["gt_bboxes_3d"].clone()
    tight = points_in_boxes(points0, boxes0, eps=-1e-3)
    loose = points_in_boxes(points0, boxes0, eps=1e-3)
    assert tight.sum() > 100
    for seed in range(3):
        np.random.seed(seed)
        out = GlobalRotScaleTrans(resize_lim=(0.9, 1.1), rot_lim=(-0.8, 0.8), trans_lim=0.5)(dict(results))
        out = RandomFlip3D(flip_ratio=0.5)(out)
        inside = points_in_boxes(out["points"], out["gt_bboxes_3d"])
        assert (inside >= tight).all() and (inside <= loose).all()
        # The augmented boxes' corners are the transformed original corners (as sets: flips reorder them).
        m = torch.from_numpy(out["lidar_aug_matrix"].astype(np.float64))
        moved = box_corners(boxes0.double()) @ m[:3, :3].T + m[:3, 3]
        corners = box_corners(out["gt_bboxes_3d"].double())
        dist = torch.cdist(corners, moved).min(-1).values
        assert dist.max() < 1e-3
