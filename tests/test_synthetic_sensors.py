"""The synthetic nuScenes-format dataset, sensors: the camera rig against the real nuScenes
calibration, and ray casting, LiDAR and camera rendering against slow references.
(The scene layout and the generated dataset: ``test_synthetic_dataset.py``.)"""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from mmdet3d.core.bbox import points_in_boxes
from mmdet3d.datasets.synthetic.camera import render_camera
from mmdet3d.datasets.synthetic.lidar import SpinningLidar
from mmdet3d.datasets.synthetic.raycast import ray_box
from mmdet3d.datasets.synthetic.rig import CAMERA_CHANNELS, camera_intrinsic, sensor2ego
from mmdet3d.datasets.synthetic.writer import build_world, ego_to_scene
from keyframe_paths import KEYFRAME


# ---------------------------------------------------------------- rig


def test_rig_matches_real_nuscenes_calibration():
    pkls = sorted(KEYFRAME.glob("*.pkl")) if KEYFRAME.is_dir() else []
    if not pkls:
        pytest.skip(f"real nuScenes keyframe not found under {KEYFRAME}")
    with open(pkls[0], "rb") as f:
        info = pickle.load(f)["data_list"][0]
    for channel in CAMERA_CHANNELS:
        cam = info["images"][channel]
        np.testing.assert_allclose(camera_intrinsic(channel, (1600, 900)), np.array(cam["cam2img"]), atol=1e-6)
        np.testing.assert_allclose(sensor2ego(channel), np.array(cam["cam2ego"]), atol=1e-6)
    np.testing.assert_allclose(sensor2ego("LIDAR_TOP"), np.array(info["lidar_points"]["lidar2ego"]), atol=1e-6)


def test_intrinsics_scale_with_image_size():
    full, half = camera_intrinsic("CAM_BACK", (1600, 900)), camera_intrinsic("CAM_BACK", (800, 450))
    np.testing.assert_allclose(half[:2], full[:2] / 2)
    with pytest.raises(KeyError, match="CAM_TOP"):
        camera_intrinsic("CAM_TOP", (800, 450))


# ---------------------------------------------------------------- ray casting


def _march(origin, direction, box, step=1e-3, far=30.0):
    """Reference: first sample along the ray inside the box (points_in_boxes), or inf."""
    t = np.arange(step, far, step)
    pts = origin[None] + t[:, None] * direction[None]
    inside = points_in_boxes(pts, box[None]).numpy()[:, 0]
    return t[inside.argmax()] if inside.any() else np.inf


def test_ray_box_matches_marching_reference():
    rng = np.random.default_rng(0)
    for _ in range(40):
        box = np.concatenate([rng.uniform(-5, 5, 3), rng.uniform(0.5, 4, 3), rng.uniform(-np.pi, np.pi, 1)])
        origin = rng.uniform(-12, 12, 3)
        if points_in_boxes(origin[None], box[None]).any():
            continue
        # Half the rays aim at the box, half anywhere.
        offset = rng.uniform(-0.45, 0.45, 3) * box[3:6]
        c, s = np.cos(box[6]), np.sin(box[6])
        target = box[:3] + [c * offset[0] - s * offset[1], s * offset[0] + c * offset[1], offset[2]]
        dirs = np.stack([target - origin, rng.normal(size=3)])
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        t, face = ray_box(origin, dirs[:, 0], dirs[:, 1], dirs[:, 2], box[:3], box[3:6] / 2, box[6])
        for k in range(2):
            ref = _march(origin, dirs[k], box)
            if np.isinf(ref):
                assert np.isinf(t[k]) or t[k] > 29.9
            else:
                assert abs(t[k] - ref) <= 1.01e-3, (t[k], ref)
        assert np.isfinite(t[0])
        # The entry face is the one whose plane holds the entry point.
        hit = origin + t[0] * dirs[0]
        local = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) @ (hit - box[:3])
        axis, positive = divmod(int(face[0]), 2)
        assert abs(local[axis] - (1 if positive else -1) * box[3 + axis] / 2) < 1e-6


def _small_scene(seed=1):
    world = build_world(seed, 0, 3)
    return world, world.layout.boxes_at(0.5)


def test_lidar_windows_keep_every_hit():
    """Windowed, culled casting equals casting every ray against every box."""
    world, boxes = _small_scene()
    lidar = SpinningLidar(num_azimuth=540, range_noise=0.0, dropout=0.0)
    pose = ego_to_scene(world.layout, 0.5) @ sensor2ego("LIDAR_TOP")
    points, owner = lidar.cast(boxes, world.ground, pose, np.random.default_rng(0))

    R, origin = pose[:3, :3], pose[:3, 3]
    d = lidar.directions @ R.T
    ranges = np.where(d[..., 2] < 0, -origin[2] / np.where(d[..., 2] < 0, d[..., 2], -1), np.inf)
    ref_owner = np.full(ranges.shape, -1)
    for k in range(len(boxes["yaw"])):
        t, _ = ray_box(origin, d[..., 0], d[..., 1], d[..., 2], boxes["center"][k], boxes["half"][k], boxes["yaw"][k])
        closer = t < ranges
        ranges[closer], ref_owner[closer] = t[closer], boxes["owner"][k]
    valid = (ranges >= lidar.min_range) & (ranges < lidar.max_range)
    ref_points = lidar.directions[valid] * ranges[valid][:, None]
    assert len(points) == valid.sum() > 10000
    np.testing.assert_allclose(points[:, :3], ref_points, atol=1e-3)
    np.testing.assert_array_equal(owner, ref_owner[valid])
    rings = np.broadcast_to(np.arange(32)[:, None], valid.shape)[valid]
    np.testing.assert_array_equal(points[:, 4], rings)
    assert (owner >= 0).sum() > 500  # objects are hit


def test_camera_render_matches_per_pixel_reference():
    """Windowed z-buffer rendering equals testing every pixel against every box."""
    world, boxes = _small_scene()
    size = (96, 54)
    K = camera_intrinsic("CAM_FRONT", size)
    pose = ego_to_scene(world.layout, 0.5) @ sensor2ego("CAM_FRONT")
    n = len(world.layout.labels)
    rgb, owner, depth, visible, unoccluded = render_camera(boxes, world.ground, world.layout.sun, pose, K, size, n)

    R, origin = pose[:3, :3], pose[:3, 3]
    u, v = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1) @ R.T
    ref_depth = np.where(rays[..., 2] < 0, -origin[2] / np.where(rays[..., 2] < 0, rays[..., 2], -1), np.inf)
    ref_depth[ref_depth > 1000] = np.inf
    ref_owner = np.full(u.shape, -1)
    ref_unoccluded = np.zeros((n,) + u.shape, dtype=bool)
    for k in range(len(boxes["yaw"])):
        t, _ = ray_box(origin, rays[..., 0], rays[..., 1], rays[..., 2], boxes["center"][k], boxes["half"][k],
                       boxes["yaw"][k])
        closer = t < ref_depth
        ref_depth[closer], ref_owner[closer] = t[closer], boxes["owner"][k]
        if boxes["owner"][k] >= 0:
            ref_unoccluded[boxes["owner"][k]] |= np.isfinite(t) & (t < 200)
    agree = owner == ref_owner
    assert agree.mean() > 0.999, agree.mean()
    np.testing.assert_allclose(depth[agree], ref_depth[agree], rtol=1e-4)
    np.testing.assert_array_equal(visible, np.bincount(ref_owner[ref_owner >= 0], minlength=n))
    assert np.abs(unoccluded - ref_unoccluded.sum((1, 2))).max() <= 1
    assert (owner >= 0).any() and (owner == -1).any()
    assert rgb.shape == (54, 96, 3) and rgb.std() > 10
