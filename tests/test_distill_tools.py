"""The TiG distiller through the tools: dist-run training, a student-only checkpoint, camera-only test."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tool_runner import REPO, TEACHER_CONFIG, check_ok, needs_mpirun, needs_torchpack, run_tool, teacher_fast  # noqa: F401

TIG_INSTANT = os.path.join(REPO, "configs", "synthetic", "distill", "tig", "instant.yaml")


@pytest.fixture
def teacher_checkpoint(tmp_path, teacher_fast):  # noqa: F811
    run = str(tmp_path / "teacher")
    check_ok(run_tool("train", TEACHER_CONFIG, "--run-dir", run, "--iters-per-epoch", "2", "--eval_interval", "0",
                      *teacher_fast, timeout=600))
    return os.path.join(run, "latest.pth")


@needs_mpirun
@needs_torchpack
def test_tig_trains_under_dist_run_and_tests_without_lidar(tmp_path, teacher_fast, teacher_checkpoint):  # noqa: F811
    run = str(tmp_path / "tig")
    check_ok(run_tool("train", TIG_INSTANT, "--run-dir", run, "--model.teacher_checkpoint", teacher_checkpoint,
                      "--iters-per-epoch", "2", "--log_interval", "1", *teacher_fast, launcher="torchpack", timeout=600))
    ckpt = torch.load(os.path.join(run, "latest.pth"), map_location="cpu", weights_only=True)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    with open(os.path.join(run, "log.jsonl")) as f:
        train = [json.loads(line) for line in f if '"mode": "train"' in line]
    for key in ("loss/distill/inner_depth", "loss/distill/inter_keypoint", "loss/distill/inter_channel", "loss/depth/dense"):
        assert all(key in r and r[key] > 0 for r in train), key

    # tools/test.py on the distillation checkpoint, on a copy of the dataset without any LiDAR file
    root = teacher_fast[teacher_fast.index("--dataset_root") + 1]
    camera_only = str(tmp_path / "no_lidar")
    shutil.copytree(root, camera_only, ignore=shutil.ignore_patterns("LIDAR_TOP", "*gt_database*"))
    assert not any("LIDAR" in d for _, dirs, _ in os.walk(camera_only) for d in dirs)
    overrides = [a if a != root else camera_only.rstrip("/") + "/" for a in teacher_fast]
    proc = check_ok(run_tool("test", TIG_INSTANT, os.path.join(run, "latest.pth"), "--eval", "bbox",
                             "--model.teacher_checkpoint", os.path.join(str(tmp_path), "absent.pth"), *overrides, timeout=600))
    assert "| NDS" in proc.stdout and "student" in proc.stderr + proc.stdout
    proc = check_ok(run_tool("benchmark", TIG_INSTANT, "--checkpoint", os.path.join(run, "latest.pth"), "--warmup", "1",
                             "--repeats", "1", "--model.teacher_checkpoint", os.path.join(str(tmp_path), "absent.pth"),
                             *overrides, timeout=600))
    assert "lidar encoder" not in proc.stdout and "| heads" in proc.stdout
