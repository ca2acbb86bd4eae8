"""Faulty data fails loudly, naming the file and the sample token: empty, truncated or nan point
files, camera images that do not fit their calibration, truncated info files, predictions that do
not fit the dataset."""
from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset, PredictionError
from mmdet3d.utils.data_files import DataFileError, MissingDataFileError, load_trusted_pickle
from nuscenes_synthetic_data import synthetic_nuscenes

POINTS = [{"type": "LoadPointsFromFile"}]
SWEEPS = POINTS + [{"type": "LoadPointsFromMultiSweeps", "sweeps_num": 3, "test_mode": True}]
IMAGES = [{"type": "LoadMultiViewImageFromFiles"}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_nuscenes(tmp_path_factory)


@pytest.fixture(scope="module")
def val_set(data):
    return NuScenesDataset(data["root"], "nuscenes_infos_val.pkl", test_mode=True)


def _infos(data) -> list[dict]:
    return copy.deepcopy(NuScenesDataset(data["root"], "nuscenes_infos_val.pkl").data_infos)


def _dataset(data, tmp_path, infos, pipeline) -> NuScenesDataset:
    path = tmp_path / "faulty.pkl"
    with open(path, "wb") as f:
        pickle.dump({"infos": infos, "metadata": {"version": "v1.0-mini"}}, f)
    return NuScenesDataset(data["root"], str(path), pipeline=pipeline, test_mode=True)


def test_empty_truncated_and_nan_point_files_name_file_and_token(data, tmp_path):
    infos = _infos(data)
    token = infos[0]["token"]
    good = np.fromfile(os.path.join(data["root"], infos[0]["lidar_path"]), np.float32).reshape(-1, 5)
    bad_points = good.copy()
    bad_points[3, 1] = np.nan
    bad_points.tofile(tmp_path / "nan.pcd.bin")
    (tmp_path / "empty.pcd.bin").write_bytes(b"")
    (tmp_path / "short.pcd.bin").write_bytes(good.tobytes()[:-4])
    cases = {"empty.pcd.bin": r"is empty \(0 bytes\)", "short.pcd.bin": "is truncated .* not a multiple of 20",
             "nan.pcd.bin": r"holds non-finite values \(nan/inf\) in 1 of %d points \(first: point 3\)" % len(good)}
    for name, problem in cases.items():
        infos[0]["lidar_path"] = str(tmp_path / name)
        with pytest.raises(DataFileError, match=rf"{name} {problem}.*\(sample token {token}\)"):
            _dataset(data, tmp_path, infos, POINTS)[0]


def test_empty_sweep_names_the_sweep_and_token(data, tmp_path):
    infos = _infos(data)
    (tmp_path / "sweep.pcd.bin").write_bytes(b"")
    infos[1]["sweeps"][0]["data_path"] = str(tmp_path / "sweep.pcd.bin")
    with pytest.raises(DataFileError, match=rf"sweep.pcd.bin is empty.*sample token {infos[1]['token']}"):
        _dataset(data, tmp_path, infos, SWEEPS)[1]


def _resized_copy(data, info, cam: str, path, scale: float) -> str:
    with Image.open(os.path.join(data["root"], info["cams"][cam]["data_path"])) as im:
        im.resize((int(im.width * scale), int(im.height * scale))).save(path)
    return str(path)


def test_image_size_must_match_the_info_calibration(data, tmp_path):
    infos = _infos(data)
    info = infos[0]
    assert (info["cams"]["CAM_BACK"]["width"], info["cams"]["CAM_BACK"]["height"]) == (320, 180)
    info["cams"]["CAM_BACK"]["data_path"] = _resized_copy(data, info, "CAM_BACK", tmp_path / "back.jpg", 0.5)
    with pytest.raises(DataFileError, match=rf"back.jpg \(sample token {info['token']}\) is 160x90 pixels but its info and calibration say 320x180"):
        _dataset(data, tmp_path, infos, IMAGES)[0]
    assert len(_dataset(data, tmp_path, infos, IMAGES)[1]["img"]) == len(info["cams"])  # other samples load


def test_without_sizes_in_the_info_images_must_agree_and_hold_the_principal_point(data, tmp_path):
    infos = _infos(data)
    for info in infos:
        for cam in info["cams"].values():
            del cam["width"], cam["height"]
    assert "image_sizes" not in _dataset(data, tmp_path, infos, None).get_data_info(0)
    info = infos[0]
    # 0.4 of the size: the principal point (the image centre) falls outside the image
    info["cams"]["CAM_FRONT"]["data_path"] = _resized_copy(data, info, "CAM_FRONT", tmp_path / "front.jpg", 0.4)
    with pytest.raises(DataFileError, match=r"front.jpg .* is 128x72 pixels but its calibration puts the principal point at .* outside"):
        _dataset(data, tmp_path, infos, IMAGES)[0]
    # 0.8: the principal point stays inside, but the image differs from the sample's other five
    info["cams"]["CAM_FRONT"]["data_path"] = _resized_copy(data, _infos(data)[0], "CAM_FRONT", tmp_path / "front.jpg", 0.8)
    with pytest.raises(DataFileError, match=r"front.jpg .* is 256x144 pixels but the other images of the sample are 320x180"):
        _dataset(data, tmp_path, infos, IMAGES)[0]


def test_truncated_info_file_names_the_file(data, tmp_path):
    raw = open(os.path.join(data["root"], "nuscenes_infos_val.pkl"), "rb").read()
    (tmp_path / "cut.pkl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError, match=r"info file .*cut.pkl cannot be read: truncated"):
        NuScenesDataset(data["root"], str(tmp_path / "cut.pkl"))
    (tmp_path / "junk.pkl").write_bytes(b"\x00\x01 not a pickle")
    with pytest.raises(DataFileError, match=r"junk.pkl cannot be read: corrupt or not a pickle"):
        load_trusted_pickle(str(tmp_path / "junk.pkl"))
    with pytest.raises(MissingDataFileError, match="info file not found: .*absent.pkl"):
        load_trusted_pickle(str(tmp_path / "absent.pkl"))


def _gt_predictions(dataset) -> list[dict]:
    out = []
    for i, info in enumerate(dataset.data_infos):
        ann = dataset.get_ann_info(i)
        out.append({"boxes_3d": torch.from_numpy(ann["gt_bboxes_3d"]), "scores_3d": torch.ones(len(ann["gt_bboxes_3d"])),
                    "labels_3d": torch.from_numpy(ann["gt_labels_3d"]), "token": info["token"]})
    return out


def test_predictions_must_fit_the_dataset(data, val_set):
    results = _gt_predictions(val_set)
    train = NuScenesDataset(data["root"], "nuscenes_infos_train.pkl", test_mode=True)
    with pytest.raises(PredictionError, match=rf"{len(train)} predictions name sample tokens not in .*val.pkl .*another split"):
        val_set.format_results(_gt_predictions(train))
    with pytest.raises(PredictionError, match=rf"1 predictions repeat a sample token \(first: {results[0]['token']}\)"):
        val_set.format_results(results + results[:1])
    without = [dict(r) for r in results]
    del without[2]["token"]
    with pytest.raises(PredictionError, match=f"1 of {len(results)} predictions have no 'token'"):
        val_set.format_results(without)
    bad = [dict(r) for r in results]
    bad[1]["scores_3d"] = bad[1]["scores_3d"].clone()
    bad[1]["scores_3d"][0] = float("nan")
    with pytest.raises(PredictionError, match=rf"prediction for sample {results[1]['token']}: scores_3d holds 1 non-finite"):
        val_set.format_results(bad)
    bad[1] = dict(results[1], boxes_3d=results[1]["boxes_3d"] * float("inf"))
    with pytest.raises(PredictionError, match=rf"sample {results[1]['token']}: boxes_3d holds"):
        val_set.format_results(bad)
    # tokens in another order are matched by token, not by position
    shuffled = val_set.format_results(results[::-1])["results"]
    assert shuffled == val_set.format_results(results)["results"]


def test_train_infos_are_scored_against_the_train_split(data, val_set, tmp_path):
    train = NuScenesDataset(data["root"], "nuscenes_infos_train.pkl", test_mode=True)
    assert (train.eval_split(), val_set.eval_split()) == ("mini_train", "mini_val")
    metrics = train.evaluate(_gt_predictions(train), out_dir=str(tmp_path))
    assert metrics["mAP"] == pytest.approx(1.0)
