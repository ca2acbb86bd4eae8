"""Pipeline steps one by one: loading, 3D transforms, filters, image steps, formatting, collate,
DataLoader workers, CBGS and GT-paste."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from mmdet3d.core.bbox import points_in_boxes
from mmdet3d.core.points import PointFileError
from mmdet3d.datasets.builder import PIPELINES
from mmdet3d.datasets.dataset_wrappers import CBGSDataset
from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.datasets.pipelines import (
    Collect3D,
    Compose,
    GlobalRotScaleTrans,
    ImageAug3D,
    ImageNormalize,
    LoadAnnotations3D,
    LoadMultiViewImageFromFiles,
    LoadPointsFromFile,
    LoadPointsFromMultiSweeps,
    ObjectNameFilter,
    ObjectRangeFilter,
    PointsRangeFilter,
    RandomFlip3D,
    collate,
)
from keyframe_paths import KEYFRAME, PKL, needs_keyframe
from nuscenes_synthetic_data import synthetic_nuscenes


def _objects(boxes, labels, names=None):
    results = {"gt_bboxes_3d": torch.tensor(boxes, dtype=torch.float32), "gt_labels_3d": torch.tensor(labels, dtype=torch.int64)}
    if names is not None:
        results["gt_names"] = np.array(names)
    return results


def _rot(theta):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


# ---------------------------------------------------------------- loading

def test_load_points_replaces_ring_with_time_lag(tmp_path):
    raw = np.arange(20, dtype=np.float32).reshape(4, 5) + 1
    raw.tofile(tmp_path / "k.pcd.bin")
    out = LoadPointsFromFile(load_dim=5, use_dim=5)({"lidar_path": str(tmp_path / "k.pcd.bin")})["points"]
    assert out.dtype == torch.float32 and out.shape == (4, 5)
    np.testing.assert_array_equal(out[:, :4].numpy(), raw[:, :4])
    assert (out[:, 4] == 0).all()
    out4 = LoadPointsFromFile(load_dim=5, use_dim=4)({"lidar_path": str(tmp_path / "k.pcd.bin")})["points"]
    np.testing.assert_array_equal(out4.numpy(), raw[:, :4])


def _write_sweep_sample(tmp_path, num_sweeps=1):
    """Keyframe + sweeps of a static point set seen from moved sensors; -> (sample, static points)."""
    rng = np.random.default_rng(0)
    static = rng.uniform([-20, -20, -1], [20, 20, 2], size=(50, 3))
    keyframe = np.concatenate([static, rng.uniform(0, 1, (50, 1)), np.full((50, 1), 7.0)], axis=1).astype(np.float32)
    keyframe.tofile(tmp_path / "key.pcd.bin")
    sweeps = []
    for i in range(num_sweeps):
        # The ego moved forward since sweep i was taken: sensor -> keyframe LiDAR is (R, t).
        rotation = _rot(0.02 * (i + 1)) @ np.array([[1, 0, 0], [0, math.cos(0.01), -math.sin(0.01)], [0, math.sin(0.01), math.cos(0.01)]])
        translation = np.array([-1.5 * (i + 1), 0.2 * i, 0.05])
        in_sensor = (static - translation) @ rotation  # R^T (p - t)
        close = np.array([[0.5, -0.3, 0.0]])  # hits the ego vehicle: removed
        pts = np.concatenate([in_sensor, close])
        data = np.concatenate([pts, np.full((len(pts), 1), 0.5), np.full((len(pts), 1), 3.0)], axis=1).astype(np.float32)
        path = tmp_path / f"sweep{i}.pcd.bin"
        data.tofile(path)
        sweeps.append({"data_path": str(path), "timestamp": 1_000_000 - 50_000 * (i + 1),
                       "sensor2lidar_rotation": rotation, "sensor2lidar_translation": translation})
    sample = {"token": "tok", "lidar_path": str(tmp_path / "key.pcd.bin"), "timestamp": 1_000_000, "sweeps": sweeps}
    return sample, static


def test_multi_sweep_points_align_with_keyframe(tmp_path):
    sample, static = _write_sweep_sample(tmp_path, num_sweeps=2)
    results = LoadPointsFromFile()(sample)
    results = LoadPointsFromMultiSweeps(sweeps_num=9, test_mode=True)(results)
    points = results["points"].numpy()
    assert points.shape == (150, 5)  # 50 keyframe + 2 x 50 sweep points; the 2 close ones removed
    key, sweep0, sweep1 = points[:50], points[50:100], points[100:]
    np.testing.assert_allclose(sweep0[:, :3], static, atol=1e-3)
    np.testing.assert_allclose(sweep1[:, :3], static, atol=1e-3)
    assert np.abs(sweep0[:, :3] - key[:, :3]).max() < 0.2
    np.testing.assert_allclose(key[:, 4], 0.0)
    np.testing.assert_allclose(sweep0[:, 4], 0.05, atol=1e-6)
    np.testing.assert_allclose(sweep1[:, 4], 0.10, atol=1e-6)
    np.testing.assert_allclose(sweep0[:, 3], 0.5)


def test_multi_sweep_choice_is_the_same_at_train_and_test(tmp_path):
    sample, _ = _write_sweep_sample(tmp_path, num_sweeps=9)
    lags = lambda r: sorted(set(np.round(r["points"][:, 4].double().numpy(), 3).tolist()) - {0.0})  # noqa: E731
    for seed in range(3):
        np.random.seed(seed)
        for test_mode in (True, False):
            newest = LoadPointsFromMultiSweeps(sweeps_num=3, test_mode=test_mode)(LoadPointsFromFile()(dict(sample)))
            assert lags(newest) == [0.05, 0.1, 0.15]
            strided = LoadPointsFromMultiSweeps(sweeps_num=3, sweep_stride=3, test_mode=test_mode)(
                LoadPointsFromFile()(dict(sample)))
            assert lags(strided) == [0.15, 0.3, 0.45]
    short = LoadPointsFromMultiSweeps(sweeps_num=3, sweep_stride=4)
    np.testing.assert_array_equal(short.choose_sweeps(9), [3, 7])  # fewer sweeps than asked: what exists
    with pytest.raises(ValueError, match="sweep_stride"):
        LoadPointsFromMultiSweeps(sweep_stride=0)


def test_multi_sweep_pads_empty_sweeps(tmp_path):
    sample, _ = _write_sweep_sample(tmp_path, num_sweeps=0)
    out = LoadPointsFromMultiSweeps(sweeps_num=4, remove_close=False)(LoadPointsFromFile()(sample))["points"]
    assert out.shape == (250, 5) and (out[:, 4] == 0).all()
    np.testing.assert_array_equal(out[200:].numpy(), out[:50].numpy())


def test_multi_sweep_static_objects_stay_in_their_boxes_on_generated_data(tmp_path_factory):
    """Generated scenes: sweep points of static objects (speed < 0.05 m/s) land in their keyframe
    GT box; without the sweep-to-keyframe transform about 1 in 6 fall outside and some objects
    lose all of them."""
    data = synthetic_nuscenes(tmp_path_factory)
    pipeline = [dict(type="LoadPointsFromFile"), dict(type="LoadAnnotations3D"),
                dict(type="LoadPointsFromMultiSweeps", sweeps_num=3, test_mode=True, pad_empty_sweeps=False)]
    dataset = NuScenesDataset(data["root"], "nuscenes_infos_train.pkl", pipeline=pipeline, test_mode=True)
    tight_total = near_total = 0
    for index in range(len(dataset)):
        results = dataset[index]
        sweep = results["points"][results["points"][:, 4] > 0]
        boxes = results["gt_bboxes_3d"][results["gt_bboxes_3d"][:, 7:9].norm(dim=1) < 0.05]
        if len(sweep) == 0 or len(boxes) == 0:
            continue
        above_ground = sweep[:, None, 2] > boxes[None, :, 2] - boxes[None, :, 5] / 2 + 0.15  # (P, M)
        near = (points_in_boxes(sweep, boxes, eps=0.5) & above_ground).sum(0)
        tight = (points_in_boxes(sweep, boxes) & above_ground).sum(0)
        enough = near >= 10
        assert (tight[enough] >= 0.9 * near[enough]).all(), f"sample {index}: {tight[enough].tolist()} of {near[enough].tolist()}"
        tight_total, near_total = tight_total + int(tight[enough].sum()), near_total + int(near[enough].sum())
    assert near_total > 1000 and tight_total >= 0.97 * near_total


def test_truncated_point_files_name_the_file(tmp_path):
    sample, _ = _write_sweep_sample(tmp_path, num_sweeps=1)
    with open(sample["sweeps"][0]["data_path"], "ab") as f:
        f.write(b"\x00\x00\x00")
    with pytest.raises(PointFileError, match="sweep0.pcd.bin"):
        LoadPointsFromMultiSweeps(test_mode=True)(LoadPointsFromFile()(sample))
    (tmp_path / "bad.pcd.bin").write_bytes(b"\x00" * 22)
    with pytest.raises(PointFileError, match="bad.pcd.bin.*truncated"):
        LoadPointsFromFile()({"lidar_path": str(tmp_path / "bad.pcd.bin")})


def test_load_images_and_missing_image(tmp_path):
    paths = []
    for i in range(2):
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"c{i}.png")
        paths.append(str(tmp_path / f"c{i}.png"))
    out = LoadMultiViewImageFromFiles()({"image_paths": paths, "token": "abc"})
    assert len(out["img"]) == 2 and out["img"][1].shape == (6, 8, 3) and out["img"][1].dtype == np.uint8
    assert (out["img"][1] == 40).all() and out["ori_shape"] == [(6, 8), (6, 8)]
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg.*sample abc"):
        LoadMultiViewImageFromFiles()({"image_paths": [paths[0], str(tmp_path / "nope.jpg")], "token": "abc"})


def test_load_annotations_copies_and_checks_shape():
    boxes = np.arange(18, dtype=np.float32).reshape(2, 9)
    out = LoadAnnotations3D()({"ann_info": {"gt_bboxes_3d": boxes, "gt_labels_3d": np.array([3, -1]), "gt_names": np.array(["bus", "x"])}})
    np.testing.assert_array_equal(out["gt_bboxes_3d"].numpy(), boxes)
    assert out["gt_labels_3d"].dtype == torch.int64 and out["gt_labels_3d"].tolist() == [3, -1]
    with pytest.raises(ValueError, match=r"sample t1.*\(M, 9\).*\(2, 7\)"):
        LoadAnnotations3D()({"token": "t1", "ann_info": {"gt_bboxes_3d": boxes[:, :7], "gt_labels_3d": np.array([0, 0])}})


# ---------------------------------------------------------------- 3D transforms and filters

BOXES = [[10.0, 2.0, -1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 2.0], [-5.0, -8.0, 0.5, 1.0, 0.8, 1.7, -2.9, 0.0, -0.5]]


def test_global_rot_scale_trans_values():
    theta, scale = 0.4, 1.1
    points = torch.tensor([[1.0, 2.0, 3.0, 0.5, 0.0], [-4.0, 0.5, -1.0, 0.1, 0.2]])
    results = {"points": points.clone(), **_objects(BOXES, [0, 1])}
    out = GlobalRotScaleTrans(resize_lim=(scale, scale), rot_lim=(theta, theta), trans_lim=0.0)(results)
    expected = scale * points[:, :3].numpy() @ _rot(theta).T
    np.testing.assert_allclose(out["points"][:, :3].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["points"][:, 3:].numpy(), points[:, 3:].numpy())
    boxes = np.array(BOXES)
    b = out["gt_bboxes_3d"].numpy()
    np.testing.assert_allclose(b[:, :3], scale * boxes[:, :3] @ _rot(theta).T, atol=1e-5)
    np.testing.assert_allclose(b[:, 3:6], scale * boxes[:, 3:6], atol=1e-5)
    np.testing.assert_allclose(b[:, 6], [0.3 + theta, -2.9 + theta], atol=1e-6)
    np.testing.assert_allclose(b[:, 7:9], scale * boxes[:, 7:9] @ _rot(theta)[:2, :2].T, atol=1e-5)
    np.testing.assert_allclose(out["lidar_aug_matrix"][:3, :3], scale * _rot(theta), atol=1e-6)
    # Yaw wraps into [-pi, pi).
    out = GlobalRotScaleTrans(rot_lim=(1.0, 1.0))(_objects([[0, 0, 0, 1, 1, 1, 2.9, 0, 0]], [0]))
    np.testing.assert_allclose(out["gt_bboxes_3d"][0, 6].item(), 3.9 - 2 * math.pi, atol=1e-6)


def test_global_rot_scale_trans_matrix_matches_points():
    np.random.seed(3)
    points = torch.randn(100, 5) * 10
    out = GlobalRotScaleTrans(resize_lim=(0.9, 1.1), rot_lim=(-0.8, 0.8), trans_lim=0.5)({"points": points.clone()})
    m = out["lidar_aug_matrix"].astype(np.float64)
    assert abs(m[:3, 3]).sum() > 0  # a translation was drawn
    np.testing.assert_allclose(out["points"][:, :3].numpy(), points[:, :3].numpy() @ m[:3, :3].T + m[:3, 3], atol=1e-4)
    test = GlobalRotScaleTrans(resize_lim=(0.5, 2.0), rot_lim=(-1, 1), is_train=False)({"points": points.clone()})
    np.testing.assert_array_equal(test["points"].numpy(), points.numpy())
    np.testing.assert_array_equal(test["lidar_aug_matrix"], np.eye(4))


@pytest.mark.parametrize("horizontal", [True, False])
def test_random_flip_values(horizontal):
    points = torch.tensor([[1.0, 2.0, 3.0, 0.5, 0.0]])
    flip = RandomFlip3D(flip_horizontal=horizontal, flip_vertical=not horizontal, flip_ratio=1.0)
    out = flip({"points": points.clone(), "lidar_aug_matrix": np.diag([2.0, 2.0, 2.0, 1.0]).astype(np.float32), **_objects(BOXES, [0, 1])})
    b, boxes = out["gt_bboxes_3d"].numpy(), np.array(BOXES)
    axis = 1 if horizontal else 0
    sign = np.ones(3)
    sign[axis] = -1
    np.testing.assert_allclose(out["points"][0, :3].numpy(), [1.0, 2.0, 3.0] * sign)
    np.testing.assert_allclose(b[:, :3], boxes[:, :3] * sign)
    np.testing.assert_allclose(b[:, 3:6], boxes[:, 3:6])
    if horizontal:
        np.testing.assert_allclose(b[:, 6], [-0.3, 2.9], atol=1e-6)
        np.testing.assert_allclose(b[:, 7:9], boxes[:, 7:9] * [1, -1])
    else:
        np.testing.assert_allclose(b[:, 6], [math.pi - 0.3, math.pi + 2.9 - 2 * math.pi], atol=1e-6)
        np.testing.assert_allclose(b[:, 7:9], boxes[:, 7:9] * [-1, 1])
    np.testing.assert_allclose(out["lidar_aug_matrix"], np.diag([*(2 * sign), 1.0]))  # composed on the left
    assert out["pcd_horizontal_flip"] is horizontal and out["pcd_vertical_flip"] is (not horizontal)
    never = RandomFlip3D(flip_ratio=0.0)({"points": points.clone()})
    np.testing.assert_array_equal(never["points"].numpy(), points.numpy())
    np.testing.assert_array_equal(never["lidar_aug_matrix"], np.eye(4))


def test_range_filters_keep_exactly_the_inside():
    pcr = [-10, -10, -2, 10, 10, 2]
    points = torch.tensor([[0, 0, 0], [9.99, -9.99, 1.99], [10, 0, 0], [0, -10, 0], [0, 0, 2], [11, 0, 0], [0, 0, -2.5]], dtype=torch.float32)
    points = torch.cat([points, torch.zeros(7, 2)], 1)
    kept = PointsRangeFilter(pcr)({"points": points})["points"]
    np.testing.assert_array_equal(kept[:, :3].numpy(), points[:2, :3].numpy())
    boxes = [[0, 0, 50, 1, 1, 1, 0, 0, 0], [10.5, 0, 0, 1, 1, 1, 0, 0, 0], [-9.5, 9.5, 0, 1, 1, 1, 4.0, 0, 0], [0, -10, 0, 1, 1, 1, 0, 0, 0]]
    out = ObjectRangeFilter(pcr)(_objects(boxes, [0, 1, 2, 3], ["a", "b", "c", "d"]))
    assert out["gt_labels_3d"].tolist() == [0, 2] and out["gt_names"].tolist() == ["a", "c"]
    np.testing.assert_allclose(out["gt_bboxes_3d"][1, 6].item(), 4.0 - 2 * math.pi, atol=1e-6)  # yaw wrapped
    with pytest.raises(ValueError, match="point_cloud_range"):
        PointsRangeFilter([0, 0, 0, -1, 1, 1])


def test_object_name_filter_drops_unknown_labels():
    out = ObjectNameFilter(["car", "bus"])(_objects([BOXES[0]] * 4, [0, -1, 1, 2], ["car", "tree", "bus", "bike"]))
    assert out["gt_labels_3d"].tolist() == [0, 1] and out["gt_names"].tolist() == ["car", "bus"]
    assert out["gt_bboxes_3d"].shape == (2, 9)


# ---------------------------------------------------------------- image steps

def test_image_aug_test_mode_is_deterministic_resize_and_centre_bottom_crop():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 100:] = 200  # right half bright
    aug = ImageAug3D(final_dim=(40, 80), resize_lim=(0.4, 0.6), is_train=False)
    out = aug({"img": [img, img]})
    m = out["img_aug_matrix"]
    assert m.shape == (2, 4, 4) and out["img"][0].shape == (40, 80, 3)
    # resize 0.5 -> 100x50; crop x0 = (100 - 80) / 2 = 10, y0 = 50 - 40 = 10.
    np.testing.assert_allclose(m[0], [[0.5, 0, 0, -10.25], [0, 0.5, 0, -10.25], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-6)
    # The bright edge at u = 99.5 maps to u' = 0.5 * 99.5 - 10.25 = 39.5: columns < 39 dark, > 40 bright.
    assert (out["img"][0][:, :39] == 0).all() and (out["img"][0][:, 41:] == 200).all()


def test_image_normalize_values():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 1] = [255, 0, 128]
    out = ImageNormalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))({"img": [img, img]})["img"]
    assert out.shape == (2, 3, 2, 3) and out.dtype == torch.float32
    np.testing.assert_allclose(out[1, :, 0, 1].numpy(), [(1 - 0.485) / 0.229, -0.456 / 0.224, (128 / 255 - 0.406) / 0.225], rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 1, 2].item(), -0.485 / 0.229, rtol=1e-5)


# ---------------------------------------------------------------- compose, formatting, collate

def test_compose_builds_runs_and_drops():
    assert "ImageAug3D" in PIPELINES and "DepthTargets" in PIPELINES and "ObjectPaste" in PIPELINES
    calls = []
    pipeline = Compose([dict(type="ObjectNameFilter", classes=["car"]), lambda r: calls.append(1) or None, lambda r: calls.append(2)])
    assert pipeline(_objects([BOXES[0]], [0])) is None and calls == [1]
    with pytest.raises(TypeError, match="step 0"):
        Compose([42])


def test_compose_names_step_and_sample_of_a_missing_key():
    pipeline = Compose([dict(type="PointsRangeFilter", point_cloud_range=[-50, -50, -5, 50, 50, 3])])
    with pytest.raises(KeyError) as e:
        pipeline({"token": "tok42", "img": []})
    message = str(e.value)
    assert "PointsRangeFilter" in message and "tok42" in message and "'points'" in message and "img" in message


def _sample(i, num_points):
    return {
        "img": torch.full((2, 3, 4, 6), float(i)),
        "points": torch.full((num_points, 5), float(i)),
        "gt_bboxes_3d": torch.zeros((i, 9)),
        "gt_labels_3d": torch.arange(i),
        "lidar2image": torch.eye(4).repeat(2, 1, 1) * (i + 1),
        "lidar_aug_matrix": np.eye(4, dtype=np.float32) * (i + 2),
        "depth_map": torch.full((2, 1, 2), float(i)),
        "metas": {"token": f"t{i}"},
    }


def test_collate_shapes_and_values():
    batch = collate([_sample(1, 5), _sample(2, 7)])
    assert batch["img"].shape == (2, 2, 3, 4, 6) and (batch["img"][1] == 2).all() and (batch["img"][0] == 1).all()
    assert batch["lidar2image"].shape == (2, 2, 4, 4) and batch["lidar2image"][1, 0, 0, 0] == 3
    assert batch["lidar_aug_matrix"].shape == (2, 4, 4) and batch["lidar_aug_matrix"][0, 3, 3] == 3
    assert batch["depth_map"].shape == (2, 2, 1, 2)
    assert [p.shape[0] for p in batch["points"]] == [5, 7] and (batch["points"][1] == 2).all()
    assert [b.shape for b in batch["gt_bboxes_3d"]] == [(1, 9), (2, 9)] and batch["gt_labels_3d"][1].tolist() == [0, 1]
    assert [m["token"] for m in batch["metas"]] == ["t1", "t2"]
    bad = _sample(2, 7)
    bad["img"] = torch.zeros(2, 3, 5, 6)
    with pytest.raises(ValueError, match="'img'"):
        collate([_sample(1, 5), bad])
    with pytest.raises(TypeError, match="entry 1"):
        collate([_sample(1, 5), None])
    assert pickle.loads(pickle.dumps(collate)) is collate  # usable by DataLoader workers


def test_collect3d_keys_and_metas():
    out = Collect3D(keys=["points"], meta_keys=["token", "absent"])({"points": 1, "token": "x", "other": 2})
    assert out == {"points": 1, "metas": {"token": "x"}}
    with pytest.raises(KeyError, match="gt_bboxes_3d"):
        Collect3D(keys=["gt_bboxes_3d"])({"token": "x"})


@needs_keyframe
def test_dataloader_workers_on_real_keyframe():
    pipeline = [
        dict(type="LoadMultiViewImageFromFiles"),
        dict(type="LoadPointsFromFile", load_dim=5, use_dim=5),
        dict(type="LoadAnnotations3D"),
        dict(type="ImageAug3D", final_dim=[96, 256], resize_lim=[0.16, 0.2], rot_lim=[-5, 5], rand_flip=True, is_train=True),
        dict(type="GlobalRotScaleTrans", resize_lim=[0.9, 1.1], rot_lim=[-0.7, 0.7], trans_lim=0.5, is_train=True),
        dict(type="RandomFlip3D"),
        dict(type="ImageNormalize"),
        dict(type="DepthTargets", downsample=8),
        dict(type="DefaultFormatBundle3D"),
        dict(type="Collect3D", keys=["img", "points", "gt_bboxes_3d", "gt_labels_3d", "lidar2image", "img_aug_matrix",
                                     "lidar_aug_matrix", "depth_map", "fg_map"]),
    ]
    dataset = NuScenesDataset(str(KEYFRAME), PKL.name, pipeline=pipeline)
    original = LoadPointsFromFile()(dataset.get_data_info(0))["points"][:, :3].double()
    loader = DataLoader(ConcatDataset([dataset] * 4), batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["img"].shape == (2, 6, 3, 96, 256) and batch["depth_map"].shape == (2, 6, 12, 32)
        assert batch["fg_map"].dtype == torch.int64 and batch["lidar_aug_matrix"].shape == (2, 4, 4)
        for i in range(2):
            m = batch["lidar_aug_matrix"][i].double()
            expected = original @ m[:3, :3].T + m[:3, 3]
            torch.testing.assert_close(batch["points"][i][:, :3].double(), expected, atol=1e-3, rtol=0)
    matrices = torch.cat([b["lidar_aug_matrix"] for b in batches])
    assert not torch.allclose(matrices[0], matrices[1]) and not torch.allclose(matrices[0], matrices[2])


# ---------------------------------------------------------------- CBGS

class _InfoDataset(Dataset):
    """Infos only: CBGS reads ``gt_names``/``valid_flag``; items are small results dicts."""

    object_classes = ("car", "pedestrian", "bicycle", "truck")
    use_valid_flag = True

    def __init__(self):
        self.data_infos = [{"gt_names": np.array(["car"]), "valid_flag": np.array([True])} for _ in range(80)]
        self.data_infos += [{"gt_names": np.array(["car", "pedestrian"]), "valid_flag": np.array([True, True])} for _ in range(15)]
        self.data_infos += [{"gt_names": np.array(["bicycle", "tree"]), "valid_flag": np.array([True, True])} for _ in range(5)]
        self.data_infos += [{"gt_names": np.array(["bicycle"]), "valid_flag": np.array([False])}]  # invalid box: not counted

    def __len__(self):
        return len(self.data_infos)

    def __getitem__(self, index):
        return {"points": torch.full((1, 5), float(index)), "metas": {"index": index}}


def test_cbgs_balances_classes():
    dataset = _InfoDataset()
    cbgs = CBGSDataset(dataset, seed=0)
    # Samples per class: car 95, pedestrian 15, bicycle 5 (truck absent) -> each class draws int(115 / 3) = 38.
    assert len(cbgs) == 3 * 38
    idx = cbgs.sample_indices
    car, ped, bike = idx[:38], idx[38:76], idx[76:]
    assert (car < 95).all() and ((ped >= 80) & (ped < 95)).all() and ((bike >= 95) & (bike < 100)).all()
    has = lambda name: np.mean([name in dataset.data_infos[i]["gt_names"] for i in idx])  # noqa: E731
    assert has("bicycle") == pytest.approx(1 / 3) and 1 / 3 <= has("pedestrian") < 0.5 and has("car") <= 2 / 3 + 1e-9
    assert cbgs[0]["metas"]["index"] == idx[0]
    np.testing.assert_array_equal(CBGSDataset(dataset, seed=0).sample_indices, idx)


@needs_keyframe
def test_cbgs_on_nuscenes_dataset_infos():
    dataset = NuScenesDataset(str(KEYFRAME), PKL.name)
    cbgs = CBGSDataset(dataset)
    present = {n for n, v in zip(dataset.data_infos[0]["gt_names"], dataset.data_infos[0]["valid_flag"]) if v}
    assert len(cbgs) == len(present & set(dataset.object_classes)) and set(cbgs.sample_indices.tolist()) == {0}
    assert cbgs.object_classes == dataset.object_classes and cbgs.data_infos is dataset.data_infos


def test_distributed_sampler_with_workers_covers_cbgs():
    cbgs = CBGSDataset(_InfoDataset(), seed=1)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(cbgs, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(cbgs, batch_size=8, sampler=sampler, num_workers=2, collate_fn=collate)
        seen += [m["index"] for batch in loader for m in batch["metas"]]
    assert sorted(seen) == sorted(cbgs.sample_indices.tolist())
