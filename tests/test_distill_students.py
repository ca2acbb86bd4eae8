"""The SimDistill, LGKD and self-assessment distillers as a whole: every loss trains the student
and only the student, every shipped student runs at test time without LiDAR, the masks
tools/visualize.py draws, and each distiller's instant config through tools/train.py and tools/test.py."""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mmdet3d.apis.runner import build_model_from_config
from mmdet3d.datasets.example_batches import add_depth_targets
from mmdet3d.models import build_model
from mmdet3d.utils.checkpoint import save_checkpoint
from mmdet3d.utils.config import load_config
from model_inputs import make_batch, one_thread, tiny_model_cfg, tiny_simdistill_cfg  # noqa: F401 (fixture)
from nuscenes_synthetic_data import synthetic_nuscenes
from tool_runner import REPO, TEACHER_CONFIG, check_ok, run_tool

IMAGE = (32, 48)
EXTENT = 8.0
LOSSES = {
    "fusion": dict(type="FeatureMSELoss", name="fusion", student="fused_bev", teacher="fused_bev"),
    "intra_modal": dict(type="FeatureMSELoss", name="intra_modal", student="camera_bev", teacher="camera_bev"),
    "cross_modal": dict(type="HeatmapMaskedMSELoss", name="cross_modal", weight=100.0),
    "pred_heatmap": dict(type="QualityFocalKDLoss", weight=0.25),
    "pred_box": dict(type="BoxCodeKDLoss", weight=0.25),
    "lidar_guided": dict(type="LiDARGuidedFeatureLoss"),
    "lidar_guided_boxes": dict(type="LiDARGuidedFeatureLoss", name="lidar_guided_boxes", foreground="boxes"),
    "depth_kd": dict(type="DepthKDLoss"),
    "response_heatmap": dict(type="SigmoidHeatmapKDLoss", weight=0.25),
    "response_box": dict(type="BoxCodeKDLoss", name="response_box", code_names=["reg", "rot"]),
    "self_assessment": dict(type="SelfAssessmentLoss", pool_size=2, embed_channels=8),
    "self_assessment_sequence": dict(type="SelfAssessmentLoss", name="self_assessment_sequence", pool_size=2,
                                     embed_channels=8, num_heads=2, patch_size=5),
}
SIMDISTILL_ONLY = ("cross_modal",)  # the plain camera student has no simulated LiDAR BEV


def _batch():
    batch = make_batch(batch_size=2, num_cams=2, image_size=IMAGE, num_boxes=(3, 1), extent=EXTENT, num_points=3000)
    return add_depth_targets(batch, downsample=8, dbound=[1.0, 12.0, 1.0])


def _plain_student():
    cfg = tiny_model_cfg(image_size=IMAGE, extent=EXTENT, lidar=False, fuser=None)
    cfg["depth_loss"] = dict(type="DenseDepthLoss", loss_weight=3.0)
    return cfg


@pytest.fixture(scope="module")
def teacher_state():
    torch.manual_seed(0)
    return build_model(tiny_model_cfg(image_size=IMAGE, extent=EXTENT, vtransform="DepthLSSTransform")).state_dict()


def _distiller(student, losses, teacher_state):
    model = build_model(dict(type="BEVDistiller", teacher=tiny_model_cfg(image_size=IMAGE, extent=EXTENT, vtransform="DepthLSSTransform"),
                             student=student, teacher_checkpoint=None, distill_losses=copy.deepcopy(losses),
                             fold_teacher_batchnorm=False))  # BN kept: the test sees its running statistics
    model.teacher.load_state_dict(teacher_state)
    return model.train()


@pytest.mark.parametrize("student", ["simdistill", "plain"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_alone_trains_the_student_and_never_the_teacher(name, student, teacher_state):
    if student == "plain" and name in SIMDISTILL_ONLY:
        pytest.skip("needs the simulated LiDAR BEV")
    torch.manual_seed(0)
    student_cfg = tiny_simdistill_cfg(image_size=IMAGE, extent=EXTENT) if student == "simdistill" else _plain_student()
    model = _distiller(student_cfg, [LOSSES[name]], teacher_state)
    losses = model(_batch())
    value = losses[f"loss/distill/{name}"]
    assert torch.isfinite(value) and value > 0
    value.backward()
    grads = [p.grad for p in model.student.encoders["camera"]["backbone"].parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0, "no gradient reaches the student's image backbone"
    assert all(p.grad is None for p in model.teacher.parameters())


def test_distillation_maps_show_the_new_masks(teacher_state):
    """tools/visualize.py's distillation panels collect every loss's ``visual_masks``."""
    from mmdet3d.apis.visualize.distill import compute_distill_maps

    losses = [LOSSES["cross_modal"], LOSSES["lidar_guided"], LOSSES["fusion"]]
    model = _distiller(tiny_simdistill_cfg(image_size=IMAGE, extent=EXTENT), losses, teacher_state).eval()
    batch = make_batch(batch_size=1, num_cams=2, image_size=IMAGE, num_boxes=(3,), extent=EXTENT, num_points=3000)
    maps = compute_distill_maps(model, batch, None)
    captions = [caption for caption, _, _ in maps.masks]
    for wanted in ("cross-modal mask H (lidar_bev) (cross_modal)", "LGKD foreground (lidar) (lidar_guided)",
                   "camera footprints (share of 2 cameras) (lidar_guided)", "LGKD distilled cells (fused_bev) (lidar_guided)"):
        assert wanted in captions, captions
    for caption, kind, value in maps.masks:
        assert kind == "map" and value.shape == (20, 20) and 0 <= value.min() and value.max() <= 1, caption


ROOT = Path(REPO)
SYNTHETIC_DISTILL = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs/synthetic/distill").rglob("*.yaml")
                           if p.name != "default.yaml")


def _student_configs():
    """The distinct students of the shipped synthetic distillation configs."""
    students = {}
    for path in SYNTHETIC_DISTILL:
        students.setdefault(load_config(str(ROOT / path))["model"]["student"], path)
    return sorted(students.values())


@pytest.mark.parametrize("path", _student_configs())
def test_every_student_runs_in_test_mode_without_points(path, one_thread):
    cfg = load_config(str(ROOT / path))
    torch.manual_seed(0)
    student = build_model_from_config(cfg, inference=True).eval()  # what tools/test.py builds: no teacher
    assert not student.reads_points
    batch = make_batch(batch_size=1, num_cams=6, image_size=tuple(cfg["image_size"]), num_boxes=(4,), extent=40.0, num_points=10)
    del batch["points"]
    with torch.no_grad():
        results = student(batch)
    assert len(results) == 1 and torch.isfinite(results[0]["boxes_3d"]).all()


NEW_INSTANT = ["configs/synthetic/distill/simdistill/instant.yaml", "configs/synthetic/distill/lgkd/instant.yaml",
               "configs/synthetic/distill/self_assessment/instant.yaml"]
EXPECTED_TERMS = {
    "simdistill": ("fusion", "intra_modal", "cross_modal", "pred_heatmap", "pred_box"),
    "lgkd": ("lidar_guided", "depth_kd", "response_heatmap", "response_box"),
    "self_assessment": ("self_assessment",),
}


@pytest.fixture(scope="module")
def tool_setup(tmp_path_factory):
    """A teacher checkpoint (the camera+LiDAR teacher config, untrained: the distiller loads it
    strictly), the overrides that run the tools on the small embedded dataset, and a copy of the
    dataset without any LiDAR file."""
    data = synthetic_nuscenes(tmp_path_factory)
    root = data["root"].rstrip("/") + "/"
    fast = ["--augment2d.resize", "[[1.1,1.1],[1.1,1.1]]", "--max_epochs", "1", "--data.workers_per_gpu", "0",
            "--data.samples_per_gpu", "1"]
    torch.manual_seed(0)
    teacher = build_model(load_config(TEACHER_CONFIG)["model"])
    path = save_checkpoint(str(tmp_path_factory.mktemp("teacher") / "teacher.pth"), teacher)
    camera_only = str(tmp_path_factory.mktemp("no_lidar") / "data")
    shutil.copytree(root, camera_only, ignore=shutil.ignore_patterns("LIDAR_TOP", "*gt_database*"))
    return {"teacher": path, "root": root, "camera_only": camera_only + "/", "fast": fast}


@pytest.mark.parametrize("config", NEW_INSTANT)
def test_instant_config_trains_through_the_tools_and_tests_without_lidar(config, tool_setup, tmp_path):
    method = Path(config).parent.name
    run = str(tmp_path / method)
    check_ok(run_tool("train", os.path.join(REPO, config), "--run-dir", run, "--model.teacher_checkpoint", tool_setup["teacher"],
                      "--iters-per-epoch", "2", "--log_interval", "1", "--dataset_root", tool_setup["root"],
                      *tool_setup["fast"], timeout=600))
    state = torch.load(os.path.join(run, "latest.pth"), map_location="cpu", weights_only=True)["state_dict"]
    assert state and not any(k.startswith("teacher.") for k in state)
    with open(os.path.join(run, "log.jsonl")) as f:
        train = [json.loads(line) for line in f if '"mode": "train"' in line]
    for term in EXPECTED_TERMS[method]:
        assert train and all(r[f"loss/distill/{term}"] > 0 for r in train), term
    if method != "simdistill":  # the LGKD and self-assessment students are the plain one TiG's tool test covers
        return
    proc = check_ok(run_tool("test", os.path.join(REPO, config), os.path.join(run, "latest.pth"), "--eval", "bbox",
                             "--model.teacher_checkpoint", str(tmp_path / "absent.pth"),
                             "--dataset_root", tool_setup["camera_only"], *tool_setup["fast"], timeout=600))
    assert "| NDS" in proc.stdout
