"""One error policy in the tools: one ``error:`` line naming the file, key or value, exit status 2
(``--debug`` keeps the traceback); resume past a corrupt checkpoint; student-only checkpoints;
predictions that carry their sample tokens."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from mmdet3d.utils import checkpoint as ckpt_mod
from mmdet3d.utils.checkpoint import add_prefix, load_checkpoint_file
from mmdet3d.utils.config import ConfigError
from tool_runner import REPO, TEACHER_CONFIG, TOY_CONFIG, check_ok, run_tool, run_tool_inprocess, teacher_fast  # noqa: F401

sys.path.insert(0, REPO)

ONE_EPOCH = ["--max_epochs", "1", "--eval_interval", "0"]


def _error_line(proc, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> str:
    run = str(tmp_path_factory.mktemp("toy1"))
    check_ok(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", run, *ONE_EPOCH))
    return run


def test_wrongly_typed_and_invalid_overrides(tmp_path):
    run = ["--run-dir", str(tmp_path / "r")]
    _error_line(run_tool_inprocess("train", TOY_CONFIG, *run, "--max_epochs", "abc"), "override --max_epochs expects an integer, got 'abc'")
    _error_line(run_tool_inprocess("train", TOY_CONFIG, *run, "--max_epochs", "0.5"), "--max_epochs expects an integer (needs a whole number), got '0.5'")
    _error_line(run_tool_inprocess("test", TOY_CONFIG, "x.pth", "--data.val.num_samples", "[6"), "override --data.val.num_samples: value '[6' is not valid yaml")
    _error_line(run_tool_inprocess("train", TOY_CONFIG, *run, "--dist_timeout_s", "-1"), "dist_timeout_s must be a positive number of seconds, got -1")


def test_debug_flag_keeps_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="--max_epochs expects an integer"):
        run_tool_inprocess("train", TOY_CONFIG, "--run-dir", str(tmp_path), "--max_epochs", "abc", "--debug")
    proc = run_tool("train", TOY_CONFIG, "--run-dir", str(tmp_path), "--max_epochs", "abc", "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_full_disk_while_saving_names_the_file(tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full not available")
    run = tmp_path / "full"
    run.mkdir()
    # the checkpoint's temporary file lands on a device that is always full (ENOSPC)
    os.symlink("/dev/full", run / f"epoch_1.pth.tmp-{os.getpid()}")
    monkeypatch.setattr(ckpt_mod, "remove_stale_temporary_files", lambda run_dir: [])
    proc = run_tool_inprocess("train", TOY_CONFIG, "--run-dir", str(run), *ONE_EPOCH)
    _error_line(proc, f"cannot write checkpoint {run / 'epoch_1.pth'}: no space left on device")
    assert not (run / "epoch_1.pth").exists() and not (run / "latest.pth").exists()


def test_resume_passes_over_a_corrupt_latest_and_removes_stale_temporaries(toy_run, tmp_path):
    run = tmp_path / "resume"
    run.mkdir()
    shutil.copy(os.path.join(toy_run, "epoch_1.pth"), run / "epoch_1.pth")
    (run / "epoch_2.pth").write_bytes(open(os.path.join(toy_run, "epoch_1.pth"), "rb").read()[:1000])  # a damaged file
    os.symlink("epoch_2.pth", run / "latest.pth")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (run / f"epoch_3.pth.tmp-{dead}").write_bytes(b"half")
    proc = check_ok(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", str(run), "--resume", "--max_epochs", "2", "--eval_interval", "0"))
    assert f"removed {run / f'epoch_3.pth.tmp-{dead}'}" in proc.stdout
    assert "passing over an unreadable checkpoint: checkpoint" in proc.stdout and "latest.pth cannot be read" in proc.stdout
    assert f"falling back to {run / 'epoch_1.pth'}" in proc.stdout and "1 epochs done, 4 steps" in proc.stdout
    assert load_checkpoint_file(str(run / "latest.pth"))["meta"]["epoch"] == 2
    assert not (run / f"epoch_3.pth.tmp-{dead}").exists()


def test_student_only_checkpoint_loads_in_test_and_benchmark(toy_run, tmp_path):
    plain = os.path.join(toy_run, "epoch_1.pth")
    student = str(tmp_path / "student.pth")
    torch.save({"state_dict": add_prefix(load_checkpoint_file(plain)["state_dict"], "student.")}, student)
    table = lambda text: [line for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
    reference = check_ok(run_tool_inprocess("test", TOY_CONFIG, plain, "--eval", "bbox"))
    proc = check_ok(run_tool_inprocess("test", TOY_CONFIG, student, "--eval", "bbox"))
    assert f"checkpoint {student} holds a distiller's student ('student.' keys)" in proc.stdout + proc.stderr
    assert table(proc.stdout) and table(proc.stdout) == table(reference.stdout)
    bench = check_ok(run_tool_inprocess("benchmark", TOY_CONFIG, "--checkpoint", student, "--warmup", "0", "--repeats", "1"))
    assert "holds a distiller's student" in bench.stdout + bench.stderr


def test_saved_predictions_carry_tokens_and_train_split_scores(toy_run, tmp_path):
    out = tmp_path / "preds.pkl"
    check_ok(run_tool_inprocess("test", TOY_CONFIG, os.path.join(toy_run, "epoch_1.pth"), "--out", str(out)))
    assert [p["token"] for p in pickle.load(open(out, "rb"))] == [f"toy-{i:04d}" for i in range(6)]
    proc = check_ok(run_tool_inprocess("test", TOY_CONFIG, os.path.join(toy_run, "epoch_1.pth"), "--split", "train", "--eval", "bbox"))
    assert "on data.train (8 samples)" in proc.stdout + proc.stderr and "| num_samples" in proc.stdout


def test_empty_point_files_in_a_loader_worker_are_one_line(tmp_path, teacher_fast):  # noqa: F811
    root = teacher_fast[teacher_fast.index("--dataset_root") + 1]
    data = pickle.load(open(os.path.join(root, "nuscenes_infos_train.pkl"), "rb"))
    empty = tmp_path / "empty.pcd.bin"
    empty.write_bytes(b"")
    for info in data["infos"]:  # every LiDAR file of the run is empty
        info["lidar_path"] = str(empty)
        for sweep in info["sweeps"]:
            sweep["data_path"] = str(empty)
    pickle.dump(data, open(tmp_path / "empty_lidar.pkl", "wb"))
    proc = run_tool("train", TEACHER_CONFIG, "--run-dir", str(tmp_path / "run"), "--iters-per-epoch", "1", "--eval_interval", "0",
                    *teacher_fast, "--data.train.ann_file", str(tmp_path / "empty_lidar.pkl"), "--data.workers_per_gpu", "1", timeout=600)
    line = _error_line(proc, f"point file {empty} is empty (0 bytes)", "(sample token ")
    assert "DataLoader worker" not in line
