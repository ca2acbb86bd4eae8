"""The real nuScenes keyframe (mmdet3d 1.x infos) read through our loader and dataset."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmdet3d.core.bbox.structures import count_points_in_boxes
from mmdet3d.core.points import load_points
from mmdet3d.datasets.mmdet3d_v1_infos import load_mmdet3d_v1_infos
from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.datasets.nuscenes_utils import CAMERA_NAMES
from keyframe_paths import KEYFRAME, PKL, needs_keyframe

TOKEN = "ca9a282c9e77460f8360f564131a8af5"

pytestmark = needs_keyframe


@pytest.fixture(scope="module")
def raw():
    with open(PKL, "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def dataset():
    return NuScenesDataset(str(KEYFRAME), PKL.name, test_mode=True)


@pytest.fixture(scope="module")
def points(dataset):
    return load_points(dataset.get_data_info(0)["lidar_path"])


def test_load_mmdet3d_v1_infos_fields(raw):
    infos = load_mmdet3d_v1_infos(str(PKL))
    assert len(infos) == 1
    info = infos[0]
    entry = raw["data_list"][0]
    assert info["token"] == TOKEN
    assert info["timestamp"] == 1532402927647951  # seconds -> integer microseconds
    assert list(info["cams"]) == list(CAMERA_NAMES)
    assert Path(info["lidar_path"]).is_file() and Path(info["cams"]["CAM_BACK"]["data_path"]).is_file()
    # 68 of the 69 instances have a detection class; the one labelled -1 is dropped.
    labels = [inst["bbox_label_3d"] for inst in entry["instances"]]
    assert labels.count(-1) == 1 and info["gt_boxes"].shape == (68, 7)
    kept = [inst for inst in entry["instances"] if inst["bbox_label_3d"] != -1]
    np.testing.assert_allclose(info["gt_boxes"], [inst["bbox_3d"] for inst in kept], rtol=0, atol=1e-4)
    names = {v: k for k, v in raw["metainfo"]["categories"].items()}
    assert list(info["gt_names"]) == [names[inst["bbox_label_3d"]] for inst in kept]
    assert list(info["num_lidar_pts"]) == [inst["num_lidar_pts"] for inst in kept]


def test_matrices_reproduce_stored_calibration(raw, dataset):
    entry = raw["data_list"][0]
    data = dataset.get_data_info(0)
    np.testing.assert_allclose(data["lidar2ego"], entry["lidar_points"]["lidar2ego"], atol=2e-6)
    np.testing.assert_allclose(data["ego2global"], entry["ego2global"], atol=2e-4)  # 1e3 m translations in float32
    for i, cam in enumerate(entry["images"].values()):
        np.testing.assert_allclose(data["lidar2camera"][i], cam["lidar2cam"], atol=1e-5)
        np.testing.assert_allclose(data["camera2ego"][i], cam["cam2ego"], atol=2e-6)
        np.testing.assert_allclose(data["camera_intrinsics"][i, :3, :3], cam["cam2img"], rtol=1e-6)
        np.testing.assert_allclose(data["lidar2image"][i], data["camera_intrinsics"][i] @ data["lidar2camera"][i],
                                   rtol=1e-5, atol=1e-3)


def test_points_project_into_each_image(dataset, points):
    data = dataset.get_data_info(0)
    hom = np.concatenate([points[:, :3], np.ones((len(points), 1), np.float32)], axis=1)
    counts, ego_x = {}, (hom @ data["lidar2ego"].T)[:, 0]
    for path, lidar2image in zip(data["image_paths"], data["lidar2image"]):
        cam = hom @ lidar2image.T.astype(np.float64)
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = cam[:, 0] / depth, cam[:, 1] / depth
        inside = (depth > 0) & (u >= 0) & (u < 1600) & (v >= 0) & (v < 900)
        name = Path(path).name.split("__")[1]
        counts[name] = int(inside.sum())
        # The front camera sees what lies ahead of the car (ego +x), the back camera what lies behind.
        if name == "CAM_FRONT":
            assert np.all(ego_x[inside] > 0)
        if name == "CAM_BACK":
            assert np.all(ego_x[inside] < 0)
    assert set(counts) == set(CAMERA_NAMES)
    assert all(2500 <= c <= 5500 for c in counts.values()), counts


def test_box_point_counts_match_nuscenes(raw, dataset, points):
    instances = raw["data_list"][0]["instances"]
    boxes = np.array([inst["bbox_3d"] for inst in instances])
    expected = np.array([inst["num_lidar_pts"] for inst in instances])
    exact = (count_points_in_boxes(points, boxes).numpy() == expected).mean()
    assert len(instances) == 69 and exact >= 0.85, exact
    info = dataset.data_infos[0]
    exact_info = (count_points_in_boxes(points, info["gt_boxes"]).numpy() == info["num_lidar_pts"]).mean()
    assert exact_info >= 0.85, exact_info


def test_ann_info_keeps_boxes_with_points(dataset):
    info = dataset.data_infos[0]
    ann = dataset.get_ann_info(0)
    assert ann["gt_bboxes_3d"].shape == (int(info["valid_flag"].sum()), 9)
    assert ann["gt_bboxes_3d"].dtype == np.float32 and ann["gt_labels_3d"].dtype == np.int64
    assert not np.isnan(ann["gt_bboxes_3d"]).any()
    assert [dataset.object_classes[i] for i in ann["gt_labels_3d"]] == list(ann["gt_names"])
    # 30 pedestrians in the keyframe; some have no points and are dropped.
    assert 0 < (ann["gt_names"] == "pedestrian").sum() <= 30


def test_relative_dataset_root_gives_existing_paths(tmp_path, monkeypatch):
    """1.x infos under a relative root: paths are joined with the root once, not twice."""
    monkeypatch.chdir(tmp_path)
    root = os.path.relpath(KEYFRAME, tmp_path)
    info = NuScenesDataset(root, PKL.name, test_mode=True).get_data_info(0)
    assert os.path.isfile(info["lidar_path"]), info["lidar_path"]
    # a doubled root can still exist when the relative path climbs to "/": check the text too
    assert info["lidar_path"].count(KEYFRAME.name) == 1, info["lidar_path"]
    assert all(os.path.isfile(p) for p in info["image_paths"])
