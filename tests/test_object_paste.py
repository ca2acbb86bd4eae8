"""GT database creation and ObjectPaste on a tiny on-disk dataset in our info format."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from mmdet3d.core.bbox import bev_corners, count_points_in_boxes, points_in_boxes
from mmdet3d.core.points import load_points
from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.datasets.pipelines import ObjectPaste, bev_boxes_collide, create_groundtruth_database

CLASSES = ("car", "pedestrian")
# Per sample: (name, box (x, y, z, dx, dy, dz, yaw), valid)
SAMPLES = [
    [("car", (10, 0, 0, 4, 2, 1.5, 0.2), True), ("pedestrian", (0, 10, 0, 0.8, 0.8, 1.8, 0.0), True)],
    [("car", (-12, 6, 0, 4.5, 2, 1.6, 1.2), True), ("pedestrian", (5, -6, 0, 0.7, 0.7, 1.7, 0.5), True),
     ("car", (30, 30, 0, 4, 2, 1.5, 0.0), False)],
    [("car", (20, -9, 0.3, 4, 1.8, 1.5, -0.7), True), ("car", (-4, -15, 0, 5, 2.2, 2, 2.5), True)],
]


def _box_points(rng, box, n):
    local = rng.uniform(-0.45, 0.45, (n, 3)) * np.array(box[3:6])
    c, s = math.cos(box[6]), math.sin(box[6])
    return local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + np.array(box[:3])


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("paste")
    rng = np.random.default_rng(0)
    infos = []
    for i, objects in enumerate(SAMPLES):
        xyz = [rng.uniform([-40, -40, -1], [40, 40, 2], (400, 3))]
        xyz += [_box_points(rng, box, 20 + 10 * k) for k, (_, box, _) in enumerate(objects)]
        xyz = np.concatenate(xyz)
        points = np.concatenate([xyz, rng.uniform(0, 1, (len(xyz), 1)), np.full((len(xyz), 1), 12.0)], 1).astype(np.float32)
        points.tofile(root / f"lidar{i}.pcd.bin")
        infos.append({
            "token": f"sample{i}", "timestamp": 1_000_000 * (i + 1), "lidar_path": f"lidar{i}.pcd.bin", "sweeps": [],
            "lidar2ego_rotation": [1, 0, 0, 0], "lidar2ego_translation": [0, 0, 0],
            "ego2global_rotation": [1, 0, 0, 0], "ego2global_translation": [0, 0, 0], "cams": {},
            "gt_boxes": np.array([box for _, box, _ in objects], np.float32),
            "gt_names": np.array([name for name, _, _ in objects]),
            "gt_velocity": np.array([[1.0, -0.5]] * len(objects), np.float32),
            "num_lidar_pts": np.array([20 + 10 * k for k in range(len(objects))]),
            "valid_flag": np.array([valid for _, _, valid in objects]),
        })
    with open(root / "tiny_infos_train.pkl", "wb") as f:
        pickle.dump({"infos": infos, "metadata": {"version": "v1.0-mini"}}, f)
    db_path = create_groundtruth_database(str(root), "tiny_infos_train.pkl", str(root), info_prefix="tiny")
    return root, db_path


def test_groundtruth_database_holds_the_points_of_each_box(tiny_dataset):
    root, db_path = tiny_dataset
    assert db_path == str(root / "tiny_dbinfos_train.pkl")
    with open(db_path, "rb") as f:
        db = pickle.load(f)
    assert sorted(db) == ["car", "pedestrian"] and len(db["car"]) == 4 and len(db["pedestrian"]) == 2  # invalid car skipped
    for name, entries in db.items():
        for entry in entries:
            sample = int(entry["sample_token"][-1])
            box = np.array(SAMPLES[sample][entry["gt_idx"]][1], np.float32)
            assert entry["name"] == name and entry["box_3d"].shape == (9,)
            np.testing.assert_allclose(entry["box_3d"], np.concatenate([box, [1.0, -0.5]]))
            obj = load_points(str(root / entry["path"]))
            np.testing.assert_allclose(obj[:, 4], 0.0)  # keyframe points carry time lag 0
            scene = load_points(str(root / f"lidar{sample}.pcd.bin"))
            expected = int(count_points_in_boxes(scene, box[None])[0])
            assert entry["num_points_in_gt"] == len(obj) == expected >= 20
            # Stored relative to the box centre: adding it back puts every point in the box.
            assert points_in_boxes(obj[:, :3] + box[:3], box[None]).all()


def _sample0(root):
    dataset = NuScenesDataset(str(root), "tiny_infos_train.pkl", pipeline=[
        dict(type="LoadPointsFromFile"), dict(type="LoadAnnotations3D")], object_classes=CLASSES, modality=dict(use_camera=False))
    return dataset[0]


def _db_sampler(root, **kwargs):
    return dict(dataset_root=str(root), info_path="tiny_dbinfos_train.pkl", classes=CLASSES,
                sample_groups=dict(car=4, pedestrian=3), **kwargs)


def test_object_paste_adds_non_overlapping_boxes_with_their_points(tiny_dataset):
    root, _ = tiny_dataset
    for seed in range(4):
        np.random.seed(seed)
        results = _sample0(root)
        before_points, before_boxes = results["points"].clone(), results["gt_bboxes_3d"].clone()
        out = ObjectPaste(db_sampler=_db_sampler(root))(results)
        boxes, labels = out["gt_bboxes_3d"], out["gt_labels_3d"]
        pasted = boxes[2:]
        assert len(pasted) >= 2 and torch.equal(boxes[:2], before_boxes)
        assert labels.tolist()[:2] == [0, 1] and len(labels) == len(boxes) == len(out["gt_names"])
        assert out["gt_names"].tolist() == [CLASSES[i] for i in labels]
        # No two boxes overlap in BEV (shapely as the independent check).
        polys = [Polygon(c.tolist()) for c in bev_corners(boxes)]
        for i in range(len(polys)):
            for j in range(i + 1, len(polys)):
                assert polys[i].intersection(polys[j]).area < 1e-6
        # Each pasted box holds exactly its database points; the sample's own points there are gone.
        counts = count_points_in_boxes(out["points"], pasted)
        with open(root / "tiny_dbinfos_train.pkl", "rb") as f:
            db = pickle.load(f)
        by_box = {tuple(np.round(e["box_3d"][:3], 3)): e["num_points_in_gt"] for es in db.values() for e in es}
        assert counts.tolist() == [by_box[tuple(np.round(b[:3].numpy(), 3))] for b in pasted]
        outside = ~points_in_boxes(before_points, pasted).any(1)
        assert len(out["points"]) == int(outside.sum()) + int(counts.sum())


def test_object_paste_filters_and_stop_epoch(tiny_dataset):
    root, _ = tiny_dataset
    np.random.seed(0)
    strict = ObjectPaste(db_sampler=_db_sampler(root, prepare=dict(filter_by_min_points=dict(car=1000))))
    out = strict(_sample0(root))
    assert set(out["gt_labels_3d"][2:].tolist()) == {1}  # only pedestrians are left to paste
    paste = ObjectPaste(db_sampler=_db_sampler(root), stop_epoch=2)
    paste.set_epoch(1)
    assert len(paste(_sample0(root))["gt_bboxes_3d"]) > 2
    paste.set_epoch(2)
    results = _sample0(root)
    points = results["points"].clone()
    out = paste(results)
    assert len(out["gt_bboxes_3d"]) == 2 and torch.equal(out["points"], points)
    with pytest.raises(FileNotFoundError, match="missing_dbinfos.pkl"):
        ObjectPaste(db_sampler=dict(dataset_root=str(root), info_path="missing_dbinfos.pkl", classes=CLASSES, sample_groups={}))


def test_bev_boxes_collide_against_shapely():
    square = np.array([[0, 0, 0, 2, 2, 1, 0.0]])
    diamond_far = np.array([[1.9, 1.9, 0, 2, 2, 1, math.pi / 4]])  # axis-aligned extents overlap, footprints do not
    diamond_near = np.array([[1.5, 1.5, 0, 2, 2, 1, math.pi / 4]])
    assert not bev_boxes_collide(square, diamond_far)[0, 0] and bev_boxes_collide(square, diamond_near)[0, 0]
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-6, 6, (40, 2)), np.zeros((40, 1)), rng.uniform(0.5, 5, (40, 3)), rng.uniform(-3, 3, (40, 1))], 1)
    polys = [Polygon(c.tolist()) for c in bev_corners(torch.from_numpy(boxes))]
    expected = np.array([[a.intersection(b).area > 1e-9 for b in polys] for a in polys])
    np.testing.assert_array_equal(bev_boxes_collide(boxes, boxes), expected)
    assert 0 < expected.sum() < expected.size
