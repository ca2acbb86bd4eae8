"""NuScenesDataset on the synthetic dataset: sample dicts, bad inputs, devkit evaluation."""
from __future__ import annotations

import copy
import json
import os
import pickle

import numpy as np
import pytest

from mmdet3d.core.points import PointFileError, load_points
from mmdet3d.datasets.builder import DATASETS, build_dataset
from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
from mmdet3d.datasets.nuscenes_eval import default_attribute, devkit_summary_table
from mmdet3d.datasets.nuscenes_utils import NUSCENES_CLASSES, pose_matrix
from nuscenes_synthetic_data import synthetic_nuscenes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_nuscenes(tmp_path_factory)


@pytest.fixture(scope="module")
def val_set(data):
    return NuScenesDataset(data["root"], "nuscenes_infos_val.pkl", test_mode=True)


def _write_infos(path, infos, version="v1.0-mini"):
    with open(path, "wb") as f:
        pickle.dump({"infos": infos, "metadata": {"version": version}}, f)
    return str(path)


def _gt_results(dataset, shift=0.0, with_attrs=True):
    results = []
    for i in range(len(dataset)):
        ann = dataset.get_ann_info(i)
        boxes = ann["gt_bboxes_3d"].copy()
        boxes[:, 0] += shift
        res = {"boxes_3d": boxes, "scores_3d": np.ones(len(boxes), np.float32), "labels_3d": ann["gt_labels_3d"]}
        if with_attrs:
            res["attrs_3d"] = ann["gt_attrs"]
        results.append(res)
    return results


def test_registered_and_built_from_config(data):
    assert "NuScenesDataset" in DATASETS
    dataset = build_dataset({"type": "NuScenesDataset", "dataset_root": data["root"],
                             "ann_file": "nuscenes_infos_train.pkl", "load_interval": 2})
    assert len(dataset) == (data["infos"]["counts"]["train"] + 1) // 2
    assert dataset.version == "v1.0-mini"


def test_sample_dict_matrices(val_set, data):
    sample = val_set.get_data_info(0)
    info = val_set.data_infos[0]
    n = len(info["cams"])
    assert n == 6 and len(sample["image_paths"]) == n and all(os.path.isabs(p) for p in sample["image_paths"])
    assert sample["token"] == info["token"] and os.path.isfile(sample["lidar_path"])
    for key in ("camera_intrinsics", "camera2ego", "camera2lidar", "lidar2camera", "lidar2image"):
        assert sample[key].shape == (n, 4, 4) and sample[key].dtype == np.float32, key
    for key in ("lidar2ego", "ego2global"):
        assert sample[key].shape == (4, 4) and sample[key].dtype == np.float32
    np.testing.assert_allclose(sample["lidar2image"], sample["camera_intrinsics"] @ sample["lidar2camera"],
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(sample["camera2lidar"] @ sample["lidar2camera"], np.broadcast_to(np.eye(4), (n, 4, 4)),
                               atol=1e-5)
    # camera2lidar = inv(lidar2ego) @ inv(ego2global) @ ego2global(camera time) @ camera2ego.
    for c, cam in enumerate(info["cams"].values()):
        camera2global = pose_matrix(cam["ego2global_rotation"], cam["ego2global_translation"]) @ sample["camera2ego"][c]
        lidar2global = sample["ego2global"].astype(np.float64) @ sample["lidar2ego"]
        np.testing.assert_allclose(lidar2global @ sample["camera2lidar"][c], camera2global, atol=2e-3)
        np.testing.assert_allclose(sample["camera_intrinsics"][c, :3, :3], cam["camera_intrinsics"], rtol=1e-6)
        assert sample["camera_intrinsics"][c, 3, 3] == 1 and sample["camera_intrinsics"][c, 0, 3] == 0


def test_ann_info_filters_and_labels(data, tmp_path):
    dataset = NuScenesDataset(data["root"], "nuscenes_infos_val.pkl", object_classes=["car", "pedestrian"])
    info = dataset.data_infos[0]
    ann = dataset.get_ann_info(0)
    expected = info["valid_flag"] & np.isin(info["gt_names"], ["car", "pedestrian"])
    assert ann["gt_bboxes_3d"].shape == (expected.sum(), 9)
    np.testing.assert_allclose(ann["gt_bboxes_3d"][:, :7], info["gt_boxes"][expected])
    np.testing.assert_array_equal(ann["gt_labels_3d"], [["car", "pedestrian"].index(n) for n in info["gt_names"][expected]])
    # nan velocity (an object seen once) becomes 0.
    infos = copy.deepcopy(dataset.data_infos)
    infos[0]["gt_velocity"][:] = np.nan
    nan_set = NuScenesDataset(data["root"], _write_infos(tmp_path / "nan.pkl", infos))
    assert np.all(nan_set.get_ann_info(0)["gt_bboxes_3d"][:, 7:] == 0)
    assert not np.all(ann["gt_bboxes_3d"][:, 7:] == 0)
    # Without the valid flag, boxes with LiDAR points are kept.
    no_flag = NuScenesDataset(data["root"], "nuscenes_infos_val.pkl", use_valid_flag=False)
    assert len(no_flag.get_ann_info(0)["gt_labels_3d"]) == int((info["num_lidar_pts"] > 0).sum())


def test_getitem_runs_pipeline_and_empty_gt(data, tmp_path):
    pytest.importorskip("mmdet3d.datasets.pipelines.loading")
    infos = copy.deepcopy(NuScenesDataset(data["root"], "nuscenes_infos_val.pkl").data_infos[:1])
    for key in ("gt_boxes", "gt_velocity", "gt_names", "num_lidar_pts", "num_radar_pts", "valid_flag", "gt_attrs"):
        infos[0][key] = infos[0][key][:0]
    pipeline = [{"type": "LoadPointsFromFile"}, {"type": "LoadMultiViewImageFromFiles"}]
    dataset = NuScenesDataset(data["root"], _write_infos(tmp_path / "empty.pkl", infos), pipeline=pipeline)
    out = dataset[0]
    assert out["ann_info"]["gt_bboxes_3d"].shape == (0, 9) and out["ann_info"]["gt_labels_3d"].shape == (0,)
    assert len(out["img"]) == 6 and out["img"][0].shape == (180, 320, 3)
    assert out["points"].shape[1] == 5 and len(out["points"]) > 1000


def test_missing_file_names_path_and_token(data, tmp_path):
    infos = copy.deepcopy(NuScenesDataset(data["root"], "nuscenes_infos_val.pkl").data_infos)
    bad = infos[1]
    bad["cams"]["CAM_BACK"]["data_path"] = "samples/CAM_BACK/missing.jpg"
    bad["cams"]["CAM_FRONT_LEFT"]["data_path"] = "samples/CAM_FRONT_LEFT/missing.jpg"
    dataset = NuScenesDataset(data["root"], _write_infos(tmp_path / "bad.pkl", infos))
    dataset.check_files(0)
    # The first missing file in camera order is CAM_FRONT_LEFT's.
    with pytest.raises(FileNotFoundError, match=rf"CAM_FRONT_LEFT/missing\.jpg.*{bad['token']}"):
        dataset.check_files()
    with pytest.raises(FileNotFoundError, match=rf"CAM_FRONT_LEFT/missing\.jpg.*{bad['token']}"):
        dataset[1]
    lidar_only = NuScenesDataset(data["root"], str(tmp_path / "bad.pkl"), modality={"use_camera": False})
    lidar_only.check_files()


def test_truncated_point_file_fails_clearly(data, tmp_path):
    info = NuScenesDataset(data["root"], "nuscenes_infos_val.pkl").data_infos[0]
    raw = open(os.path.join(data["root"], info["lidar_path"]), "rb").read()
    truncated = tmp_path / "truncated.pcd.bin"
    truncated.write_bytes(raw[:-8])
    with pytest.raises(PointFileError, match=r"truncated\.pcd\.bin.*not a multiple of 20"):
        load_points(str(truncated))
    pytest.importorskip("mmdet3d.datasets.pipelines.loading")
    infos = [copy.deepcopy(info)]
    infos[0]["lidar_path"] = str(truncated)  # absolute paths survive the join with the root
    dataset = NuScenesDataset(data["root"], _write_infos(tmp_path / "t.pkl", infos),
                              pipeline=[{"type": "LoadPointsFromFile"}], test_mode=True)
    with pytest.raises(PointFileError, match="truncated.pcd.bin"):
        dataset[0]


def test_bad_version_and_ann_file(data, tmp_path):
    with pytest.raises(ValueError, match="v1.0-minii"):
        NuScenesDataset(data["root"], "nuscenes_infos_val.pkl", version="v1.0-minii")
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        NuScenesDataset(data["root"], "nope.pkl")
    bad = tmp_path / "list.pkl"
    bad.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="list.pkl"):
        NuScenesDataset(data["root"], str(bad))


def test_evaluate_round_trip_and_shifted(val_set, tmp_path, capsys):
    metrics = val_set.evaluate(_gt_results(val_set), out_dir=str(tmp_path))
    assert metrics["mAP"] > 0.99 and metrics["NDS"] > 0.99, metrics
    assert metrics["mATE"] < 0.01 and metrics["mAVE"] < 0.05
    assert metrics["object/car_ap_dist_0.5"] > 0.99 and metrics["object/car_ap"] > 0.99
    summary = json.load(open(tmp_path / "metrics_summary.json"))
    assert summary["mean_ap"] == pytest.approx(metrics["mAP"])
    written = json.load(open(tmp_path / "results_nusc.json"))
    assert written["meta"]["use_camera"] and written["meta"]["use_lidar"]
    assert set(written["results"]) == {i["token"] for i in val_set.data_infos}
    # The printed table is the devkit's, and devkit_summary_table reproduces it.
    printed = capsys.readouterr().out
    table = devkit_summary_table(summary)
    assert table.split("Eval time")[0] in printed and table.split("Per-class results:")[1] in printed

    shifted = val_set.evaluate(_gt_results(val_set, shift=2.0))
    assert shifted["mAP"] < 0.6 and shifted["NDS"] < metrics["NDS"] - 0.2, shifted
    assert shifted["object/car_ap_dist_0.5"] == 0.0 and shifted["mATE"] > 1.5


def test_evaluate_default_attributes_tokens_and_empty_predictions(val_set, tmp_path):
    results = _gt_results(val_set, with_attrs=False)
    for r, info in zip(results, val_set.data_infos):
        r["token"] = info["token"]
    results = results[::-1]  # matched by token, not by order
    empty = {"boxes_3d": np.zeros((0, 9)), "scores_3d": np.zeros(0), "labels_3d": np.zeros(0, np.int64),
             "token": results[0]["token"]}
    metrics = val_set.evaluate([empty] + results[1:])
    assert 0.5 < metrics["mAP"] < 1.0  # one sample of GT left unmatched
    full = val_set.evaluate(results)
    assert full["mAP"] > 0.99 and 0.0 <= full["mAAE"] <= 1.0


def test_evaluate_without_any_box_scores_zero(val_set, tmp_path, capsys):
    """An untrained model may predict nothing at all; the devkit alone would crash on that."""
    empty = [{"boxes_3d": np.zeros((0, 9)), "scores_3d": np.zeros(0), "labels_3d": np.zeros(0, np.int64)}
             for _ in range(len(val_set))]
    metrics = val_set.evaluate(empty, out_dir=str(tmp_path))
    assert metrics["mAP"] == 0.0 and metrics["NDS"] == 0.0 and metrics["mATE"] == 1.0
    assert metrics["object/car_ap"] == 0.0
    with open(tmp_path / "metrics_summary.json") as f:
        assert json.load(f)["mean_ap"] == 0.0
    assert "no predicted boxes" in capsys.readouterr().out


def test_evaluate_missing_tokens_fails_with_count(val_set):
    results = _gt_results(val_set)
    for r, info in zip(results, val_set.data_infos):
        r["token"] = info["token"]
    with pytest.raises(ValueError, match=r"missing 2 of the %d sample tokens" % len(val_set)):
        val_set.evaluate(results[2:])
    with pytest.raises(ValueError, match="dataset order"):
        val_set.evaluate([{k: v for k, v in r.items() if k != "token"} for r in results[1:]])
    with pytest.raises(ValueError, match="metric"):
        val_set.evaluate(results, metric="segm")


def test_default_attribute_rule():
    assert default_attribute("car", [0.3, 0.0]) == "vehicle.moving"
    assert default_attribute("trailer", [0.1, 0.1]) == "vehicle.parked"
    assert default_attribute("bus", [0.1, 0.0]) == "vehicle.stopped"
    assert default_attribute("bus", [0.0, 2.0]) == "vehicle.moving"
    assert default_attribute("bicycle", [0.0, 0.5]) == "cycle.with_rider"
    assert default_attribute("motorcycle", [0.0, 0.0]) == "cycle.without_rider"
    assert default_attribute("pedestrian", [1.0, 0.0]) == "pedestrian.moving"
    assert default_attribute("pedestrian", [0.1, 0.0]) == "pedestrian.standing"
    assert default_attribute("barrier", [3.0, 0.0]) == "" and default_attribute("traffic_cone", [0, 0]) == ""
    assert len(NUSCENES_CLASSES) == 10


def _to_mmdet3d_v1(dataset: NuScenesDataset, index: int) -> dict:
    """Our sample as an mmdet3d 1.x ``data_list`` entry (what mmdet3d's info updater writes)."""
    info, sample = dataset.data_infos[index], dataset.get_data_info(index)
    categories = {name: i for i, name in enumerate(NUSCENES_CLASSES)}
    return {
        "token": info["token"], "timestamp": info["timestamp"] / 1e6, "ego2global": sample["ego2global"].tolist(),
        "lidar_points": {"lidar_path": info["lidar_path"], "lidar2ego": sample["lidar2ego"].tolist()},
        "lidar_sweeps": [{
            "lidar_points": {"lidar_path": s["data_path"],
                             "lidar2ego": pose_matrix(s["sensor2ego_rotation"], s["sensor2ego_translation"]).tolist()},
            "ego2global": pose_matrix(s["ego2global_rotation"], s["ego2global_translation"]).tolist(),
            "lidar2sensor": np.linalg.inv(pose_matrix(s["sensor2lidar_rotation"], s["sensor2lidar_translation"])).tolist(),
            "timestamp": s["timestamp"] / 1e6, "sample_data_token": s["sample_data_token"],
        } for s in info["sweeps"]],
        "images": {name: {"img_path": cam["data_path"], "cam2img": cam["camera_intrinsics"].tolist(),
                          "cam2ego": sample["camera2ego"][c].tolist(), "lidar2cam": sample["lidar2camera"][c].tolist(),
                          "timestamp": cam["timestamp"] / 1e6, "sample_data_token": cam["sample_data_token"]}
                   for c, (name, cam) in enumerate(info["cams"].items())},
        "instances": [{"bbox_3d": box.tolist(), "bbox_label_3d": categories[name], "velocity": velo.tolist(),
                       "num_lidar_pts": int(n), "num_radar_pts": 0, "bbox_3d_isvalid": bool(n > 0)}
                      for box, name, velo, n in zip(info["gt_boxes"], info["gt_names"], info["gt_velocity"],
                                                    info["num_lidar_pts"])],
    }, categories


def test_mmdet3d_v1_infos_reproduce_our_sample_dict(val_set, data, tmp_path):
    from mmdet3d.datasets.mmdet3d_v1_infos import load_mmdet3d_v1_infos

    index = len(val_set) - 1  # the last keyframe has sweeps
    entry, categories = _to_mmdet3d_v1(val_set, index)
    path = tmp_path / "v1.pkl"
    path.write_bytes(pickle.dumps({"metainfo": {"categories": categories, "version": "v1.0-mini"},
                                   "data_list": [entry]}))
    infos = load_mmdet3d_v1_infos(str(path), data_root=data["root"])
    assert infos[0]["timestamp"] == val_set.data_infos[index]["timestamp"]
    v1_set = NuScenesDataset(data["root"], str(path), test_mode=True)
    assert v1_set.version == "v1.0-mini"
    ours, theirs = val_set.get_data_info(index), v1_set.get_data_info(0)
    assert theirs["image_paths"] == ours["image_paths"] and theirs["lidar_path"] == ours["lidar_path"]
    for key in ("lidar2ego", "camera2ego", "camera2lidar", "lidar2camera", "camera_intrinsics"):
        np.testing.assert_allclose(theirs[key], ours[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(theirs["lidar2image"], ours["lidar2image"], rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(theirs["ego2global"], ours["ego2global"], atol=1e-3)
    assert len(theirs["sweeps"]) == len(ours["sweeps"]) > 0
    for a, b in zip(theirs["sweeps"], ours["sweeps"]):
        assert a["data_path"] == b["data_path"] and a["timestamp"] == b["timestamp"]
        np.testing.assert_allclose(a["sensor2lidar_rotation"], b["sensor2lidar_rotation"], atol=1e-5)
        np.testing.assert_allclose(a["sensor2lidar_translation"], b["sensor2lidar_translation"], atol=1e-4)
    np.testing.assert_allclose(theirs["ann_info"]["gt_bboxes_3d"], ours["ann_info"]["gt_bboxes_3d"], atol=1e-5)
    np.testing.assert_array_equal(theirs["ann_info"]["gt_labels_3d"], ours["ann_info"]["gt_labels_3d"])


def test_mmdet3d_v1_loader_rejects_other_files(tmp_path):
    from mmdet3d.datasets.mmdet3d_v1_infos import load_mmdet3d_v1_infos

    path = tmp_path / "ours.pkl"
    path.write_bytes(pickle.dumps({"infos": [], "metadata": {}}))
    with pytest.raises(ValueError, match=r"ours\.pkl.*data_list"):
        load_mmdet3d_v1_infos(str(path))
    with pytest.raises(FileNotFoundError, match="absent.pkl"):
        load_mmdet3d_v1_infos(str(tmp_path / "absent.pkl"))


def test_filter_empty_gt_redraws_in_training(data, tmp_path):
    infos = copy.deepcopy(NuScenesDataset(data["root"], "nuscenes_infos_val.pkl").data_infos[:2])
    infos[0]["valid_flag"][:] = False  # no box of sample 0 survives the valid flag
    path = _write_infos(tmp_path / "f.pkl", infos)
    train = NuScenesDataset(data["root"], path, filter_empty_gt=True)
    assert train[0]["token"] == infos[1]["token"] and train[1]["token"] == infos[1]["token"]
    assert NuScenesDataset(data["root"], path, filter_empty_gt=False)[0]["token"] == infos[0]["token"]
    test = NuScenesDataset(data["root"], path, filter_empty_gt=True, test_mode=True)
    assert test[0]["token"] == infos[0]["token"]
    infos[1]["valid_flag"][:] = False
    with pytest.raises(RuntimeError, match="every other sample"):
        NuScenesDataset(data["root"], _write_infos(tmp_path / "g.pkl", infos), filter_empty_gt=True)[0]
