"""tools/train.py, tools/test.py and tools/benchmark.py end to end on the toy detector (one process).

Multi-process launches (torchpack dist-run, torchrun) are in test_distributed.py. The last tests
run the real teacher config on the small embedded dataset the session generates.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys

import pytest
import torch
import yaml

from tool_runner import (
    REPO,
    TEACHER_CONFIG,
    TOY_CONFIG,
    TOY_CYCLIC_CONFIG,
    check_ok,
    isolated_registries,
    load_weights,
    max_abs_diff,
    teacher_fast,
    run_tool,
    run_tool_inprocess,
)

sys.path.insert(0, REPO)


def _assert_clean_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Two epochs of the toy config in one go (the reference for resume and test.py)."""
    run_dir = str(tmp_path_factory.mktemp("straight"))
    check_ok(run_tool("train", TOY_CONFIG, "--run-dir", run_dir))
    return run_dir


def test_train_writes_config_logs_checkpoints(straight_run):
    run = straight_run
    cfg = yaml.safe_load(open(os.path.join(run, "configs.yaml")))
    assert cfg["data"]["test"] == cfg["data"]["val"] and cfg["model"]["type"] == "ToyDetector"  # references resolved
    assert os.readlink(os.path.join(run, "latest.pth")) == "epoch_2.pth"
    ckpt = torch.load(os.path.join(run, "epoch_2.pth"), weights_only=True)
    assert ckpt["meta"]["epoch"] == 2 and ckpt["meta"]["iter"] == 8  # 8 samples / batch 2 = 4 steps per epoch
    assert ckpt["scheduler"]["last_iter"] == 8 and ckpt["meta"]["config"]["max_epochs"] == 2
    records = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
    train = [r for r in records if r["mode"] == "train"]
    val = [r for r in records if r["mode"] == "val"]
    assert [r["iter"] for r in train] == [2, 4, 6, 8]  # log_interval 2
    assert all(r["loss"] == pytest.approx(r["loss/object/centre"]) and r["lr"] > 0 for r in train)
    assert train[-1]["lr"] == pytest.approx(1e-2 * 1e-3)  # cosine ends at min_lr_ratio * lr
    assert [r["epoch"] for r in val] == [1, 2] and all(0 <= r["mAP"] <= 1 and r["num_samples"] == 6 for r in val)
    text = open(os.path.join(run, "log.txt")).read()
    assert "epoch 2 [4/4] lr" in text and "| NDS" in text and "saved checkpoint" in text
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(run, "tensorboard")))


def _resume_check_dirs(reference_dir: str, run: str, config: str, extra: list[str], expected_steps: int) -> None:
    os.makedirs(run)
    # the state a run stopped after epoch 1 leaves behind: its epoch-1 checkpoint and latest link
    shutil.copy(os.path.join(reference_dir, "epoch_1.pth"), os.path.join(run, "epoch_1.pth"))
    os.symlink("epoch_1.pth", os.path.join(run, "latest.pth"))
    proc = check_ok(run_tool("train", config, "--run-dir", run, "--resume", *extra, timeout=600))
    assert "resumed from" in proc.stdout and f"1 epochs done, {expected_steps} steps" in proc.stdout
    straight = torch.load(os.path.join(reference_dir, "epoch_2.pth"), weights_only=True)
    resumed = torch.load(os.path.join(run, "epoch_2.pth"), weights_only=True)
    assert max_abs_diff(straight["state_dict"], resumed["state_dict"]) < 1e-6
    assert resumed["scheduler"] == straight["scheduler"] and resumed["meta"]["iter"] == straight["meta"]["iter"]
    exp_avg = lambda c: [s["exp_avg"] for s in c["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(exp_avg(straight), exp_avg(resumed)))


def _resume_check(tmp_path, config: str, reference_dir: str, extra: list[str]) -> None:
    _resume_check_dirs(reference_dir, str(tmp_path / "resumed"), config, extra, expected_steps=4)


def test_resume_matches_straight_run(straight_run, tmp_path):
    _resume_check(tmp_path, TOY_CONFIG, straight_run, [])


def test_resume_with_workers_cyclic_and_accumulation(tmp_path):
    # random augmentation inside a DataLoader worker, one-cycle schedule, 2 iterations per step
    extra = ["--data.workers_per_gpu", "1", "--data.samples_per_gpu", "1"]
    reference = str(tmp_path / "straight")
    check_ok(run_tool("train", TOY_CYCLIC_CONFIG, "--run-dir", reference, *extra))
    ckpt = torch.load(os.path.join(reference, "epoch_1.pth"), weights_only=True)
    assert ckpt["meta"]["iter"] == 4  # 8 iterations of batch 1, one optimiser step every 2
    _resume_check(tmp_path, TOY_CYCLIC_CONFIG, reference, extra)


def test_worker_count_does_not_change_the_weights(tmp_path):
    """Augmentation is seeded per sample (seed, epoch, index): 0 and 2 loader workers train
    bit-identical weights (the toy dataset jitters its points with np.random)."""
    weights = []
    for workers in ("0", "2"):
        run = str(tmp_path / f"workers{workers}")
        check_ok(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", run, "--data.workers_per_gpu", workers, "--eval_interval", "0"))
        weights.append(load_weights(os.path.join(run, "epoch_2.pth")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_different_seed_changes_training(straight_run, tmp_path):
    run = str(tmp_path / "seed1")
    check_ok(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", run, "--seed", "1", "--max_epochs", "1", "--eval_interval", "0"))
    assert max_abs_diff(load_weights(os.path.join(straight_run, "epoch_1.pth")), load_weights(os.path.join(run, "epoch_1.pth"))) > 1e-3


def test_load_from_reports_missing_and_unexpected(straight_run, tmp_path):
    state = load_weights(os.path.join(straight_run, "epoch_2.pth"))
    del state["fuser.0.bias"]
    state["old_head.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "init.pth")
    run = str(tmp_path / "finetune")
    proc = check_ok(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", run, "--load_from", str(tmp_path / "init.pth"), "--max_epochs", "1", "--eval_interval", "0"))
    assert "1 missing keys, 1 unexpected keys" in proc.stdout
    assert "fuser.0.bias" in proc.stdout and "old_head.weight" in proc.stdout


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    run = str(tmp_path / "nan")
    # the 6th training forward pass (epoch 2, iteration 2) returns nan
    proc = run_tool("train", TOY_CONFIG, "--run-dir", run, "--model.nan_at_call", "6", "--eval_interval", "0")
    _assert_clean_error(proc, "non-finite loss at epoch 2, iteration 2", "loss/object/centre=nan on rank 0", "epoch_1.pth")
    assert os.readlink(os.path.join(run, "latest.pth")) == "epoch_1.pth"
    assert not os.path.exists(os.path.join(run, "epoch_2.pth"))


def test_user_errors_are_one_clear_line(straight_run, tmp_path):
    # a real process once, to see exactly what the user sees; the others in-process (faster)
    _assert_clean_error(run_tool("train", str(tmp_path / "missing.yaml")), "config file not found", "missing.yaml")
    _assert_clean_error(
        run_tool_inprocess("train", TOY_CONFIG, "--run-dir", str(tmp_path / "r"), "--optimizer.lrr", "0.1"),
        "override key 'optimizer.lrr' does not exist",
        "closest existing keys: optimizer.lr",
    )
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    _assert_clean_error(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", str(blocker / "run")), "is not writable", str(blocker / "run"))
    _assert_clean_error(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", str(tmp_path / "fresh"), "--resume"), "--resume: no checkpoint")
    _assert_clean_error(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", str(tmp_path / "t"), "--model.type", "ToyDetectr"), "model:", "Did you mean ToyDetector")


def test_checkpoint_of_other_architecture_is_rejected(straight_run, tmp_path):
    ckpt = os.path.join(straight_run, "epoch_2.pth")
    _assert_clean_error(run_tool_inprocess("test", TOY_CONFIG, ckpt, "--model.channels", "4"), "does not fit this model: shape mismatch", "epoch_2.pth")
    torch.save({"state_dict": torch.nn.Conv3d(2, 2, 1).state_dict()}, tmp_path / "other.pth")
    _assert_clean_error(run_tool_inprocess("test", TOY_CONFIG, str(tmp_path / "other.pth")), "none of its 2 keys match", "other.pth")
    _assert_clean_error(run_tool_inprocess("train", TOY_CONFIG, "--run-dir", str(tmp_path / "lf"), "--load_from", str(tmp_path / "other.pth")), "different architecture")


def test_test_tool_writes_predictions_and_metrics(straight_run, tmp_path):
    out = str(tmp_path / "eval" / "results.pkl")
    proc = check_ok(run_tool("test", TOY_CONFIG, os.path.join(straight_run, "latest.pth"), "--eval", "bbox", "--out", out, "--run-dir", str(tmp_path / "eval")))
    results = pickle.load(open(out, "rb"))
    assert len(results) == 6 and results[0]["boxes_3d"].shape == (1, 9)
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    val_log = [json.loads(line) for line in open(os.path.join(straight_run, "log.jsonl"))][-1]
    assert val_log["mode"] == "val" and metrics["NDS"] == pytest.approx(val_log["NDS"])  # same as the epoch-2 evaluation
    assert "| mAP" in proc.stdout and "| NDS" in proc.stdout


def test_benchmark_prints_stage_table(straight_run):
    proc = check_ok(run_tool("benchmark", TOY_CONFIG, "--checkpoint", os.path.join(straight_run, "latest.pth"), "--warmup", "1", "--repeats", "3"))
    for stage in ("camera backbone", "camera neck", "view transform", "lidar encoder", "fuser", "decoder", "heads", "end to end"):
        assert f"| {stage}" in proc.stdout, proc.stdout
    assert "samples/s (batch 1, median of 3 after 1 warm-up)" in proc.stdout


def test_set_epoch_reaches_pipeline_steps():
    from mmdet3d.apis.data import set_epoch_recursive

    with isolated_registries():
        from tests.toy_components import ToyDataset
    dataset = ToyDataset(num_samples=2)
    wrapper = torch.utils.data.ConcatDataset([dataset])
    assert set_epoch_recursive(wrapper, 3) == 1
    assert dataset.pipeline[0].epoch == 3 and dataset[0]["epoch"] == 3

    class Forwarding:  # a Compose-like pipeline that forwards the epoch itself
        def __init__(self, steps):
            self.transforms, self.calls = steps, 0

        def set_epoch(self, epoch):
            self.calls += 1
            for step in self.transforms:
                step.set_epoch(epoch)

    dataset.pipeline = Forwarding(dataset.pipeline)
    assert set_epoch_recursive(wrapper, 5) == 1  # called once, not again on the steps it forwards to
    assert dataset.pipeline.calls == 1 and dataset.pipeline.transforms[0].epoch == 5


def test_seeded_samples_draw_per_sample_and_epoch():
    import numpy as np

    from mmdet3d.apis.data import SeededSamples

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return float(np.random.rand()), float(torch.rand(()))

    dataset = SeededSamples(Draws(), seed=3)
    forward = [dataset[i] for i in range(4)]
    np.random.seed(99)
    state = np.random.get_state()[1].copy(), torch.get_rng_state()
    assert [dataset[i] for i in reversed(range(4))] == forward[::-1]  # order and prior state do not matter
    assert np.array_equal(np.random.get_state()[1], state[0]) and torch.equal(torch.get_rng_state(), state[1])
    assert len(set(forward)) == 4
    dataset.set_epoch(1)
    assert all(a != b for a, b in zip(forward, [dataset[i] for i in range(4)]))


# ----- the real teacher config on the small embedded dataset the session generates -----


def test_teacher_config_trains_and_tests(tmp_path, teacher_fast):
    run = str(tmp_path / "teacher")
    check_ok(run_tool("train", TEACHER_CONFIG, "--run-dir", run, "--iters-per-epoch", "2", "--eval_interval", "0", *teacher_fast, timeout=600))
    ckpt = torch.load(os.path.join(run, "epoch_1.pth"), weights_only=True)
    assert ckpt["meta"]["iter"] == 2 and ckpt["meta"]["config"]["model"]["type"] == "BEVFusion"
    plain, fused = str(tmp_path / "plain.pkl"), str(tmp_path / "fused.pkl")
    proc = check_ok(run_tool("test", TEACHER_CONFIG, os.path.join(run, "epoch_1.pth"), "--eval", "bbox", "--out", plain,
                             *teacher_fast, timeout=600))
    assert "| NDS" in proc.stdout and "| mAP" in proc.stdout
    # --fuse-conv-bn (BatchNorm folded into the convs): the same predictions
    proc = check_ok(run_tool("test", TEACHER_CONFIG, os.path.join(run, "epoch_1.pth"), "--fuse-conv-bn", "--out", fused,
                             *teacher_fast, timeout=600))
    assert "folded" in proc.stdout + proc.stderr
    for a, b in zip(pickle.load(open(plain, "rb")), pickle.load(open(fused, "rb")), strict=True):
        assert len(a["scores_3d"]) == len(b["scores_3d"])
        torch.testing.assert_close(b["scores_3d"], a["scores_3d"], rtol=1e-3, atol=1e-4)
    # the train split, scored against the devkit's train split, with its sample tokens saved
    out = str(tmp_path / "train_preds.pkl")
    proc = check_ok(run_tool("test", TEACHER_CONFIG, os.path.join(run, "epoch_1.pth"), "--split", "train", "--eval", "bbox", "--out", out,
                             *teacher_fast, timeout=600))
    root = teacher_fast[teacher_fast.index("--dataset_root") + 1]
    train_tokens = [info["token"] for info in pickle.load(open(os.path.join(root, "nuscenes_infos_train.pkl"), "rb"))["infos"]]
    assert "| NDS" in proc.stdout and [p["token"] for p in pickle.load(open(out, "rb"))] == train_tokens


def test_teacher_config_benchmark(teacher_fast):
    proc = check_ok(run_tool("benchmark", TEACHER_CONFIG, "--warmup", "1", "--repeats", "2", *teacher_fast, timeout=600))
    for stage in ("camera backbone", "view transform", "lidar encoder", "fuser", "decoder", "heads"):
        assert f"| {stage}" in proc.stdout, proc.stdout


def test_teacher_config_resume_matches_straight_run(tmp_path, teacher_fast):
    # real augmentation (image and global 3D) with random draws: the resumed run must replay them
    args = ["--iters-per-epoch", "2", "--eval_interval", "0", *teacher_fast, "--max_epochs", "2"]
    straight = str(tmp_path / "straight")
    check_ok(run_tool("train", TEACHER_CONFIG, "--run-dir", straight, *args, timeout=600))
    _resume_check_dirs(straight, str(tmp_path / "resumed"), TEACHER_CONFIG, args, expected_steps=2)


def test_teacher_config_weights_do_not_depend_on_the_worker_count(tmp_path, teacher_fast):
    # image and 3D augmentation draw from np.random inside the pipeline; the draws follow the sample
    weights = []
    for workers in ("0", "2"):
        run = str(tmp_path / f"workers{workers}")
        check_ok(run_tool("train", TEACHER_CONFIG, "--run-dir", run, "--iters-per-epoch", "2", "--eval_interval", "0",
                          *teacher_fast, "--data.workers_per_gpu", workers, timeout=600))
        weights.append(load_weights(os.path.join(run, "epoch_1.pth")))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
