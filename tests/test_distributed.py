"""Multi-process training and testing: torchpack dist-run (OpenMPI), torchrun, and the helpers.

The toy detector has no batch-dependent layer, so DDP over 2 processes with 1 sample each must
follow the same trajectory as one process with batches of 2: the DistributedSampler gives rank r
the samples ``perm[r::2]`` of the permutation one process takes in pairs.
"""
from __future__ import annotations

import os
import pickle
import sys
import time

import pytest
import torch

from tool_runner import (
    REPO,
    TEACHER_CONFIG,
    TOY_CONFIG,
    check_ok,
    load_weights,
    max_abs_diff,
    needs_mpirun,
    teacher_fast,
    needs_torchpack,
    run_tool,
)

sys.path.insert(0, REPO)

from mmdet3d.apis.test import collect_results  # noqa: E402
from mmdet3d.utils import distributed as dist  # noqa: E402

# no random augmentation: per-rank random streams would differ from a single process's
_EXACT = ["--data.train.jitter", "0", "--eval_interval", "0"]


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchpack")):
        pytest.skip("torchpack launcher missing")
    import shutil

    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not found: install OpenMPI 4 (apt-get install -y openmpi-bin) for torchpack dist-run")
    run = str(tmp_path_factory.mktemp("distrun"))
    proc = check_ok(
        run_tool("train", TOY_CONFIG, "--run-dir", run, "--data.samples_per_gpu", "1", "--debug-rank-dumps", *_EXACT, launcher="torchpack", timeout=180)
    )
    return run, proc


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("single"))
    check_ok(run_tool("train", TOY_CONFIG, "--run-dir", run, "--data.samples_per_gpu", "2", *_EXACT))
    ckpt = torch.load(os.path.join(run, "epoch_2.pth"), weights_only=True)
    assert ckpt["meta"]["iter"] == 8  # as many optimiser steps as 2 ranks x 1 sample: 8 samples / 2
    return run


def _rank_dumps(run: str) -> dict[str, dict[str, torch.Tensor]]:
    debug = os.path.join(run, "debug")
    dumps = {name: load_weights(os.path.join(debug, name)) for name in sorted(os.listdir(debug))}
    assert set(dumps) == {"rank0_step1.pth", "rank1_step1.pth", "rank0_final.pth", "rank1_final.pth"}
    assert max_abs_diff(dumps["rank0_step1.pth"], dumps["rank1_step1.pth"]) == 0.0  # identical after one step
    assert max_abs_diff(dumps["rank0_final.pth"], dumps["rank1_final.pth"]) == 0.0
    assert max_abs_diff(dumps["rank0_step1.pth"], dumps["rank0_final.pth"]) > 1e-4  # training did move them
    assert max_abs_diff(dumps["rank0_final.pth"], load_weights(os.path.join(run, "epoch_2.pth"))) == 0.0
    return dumps


@needs_mpirun
@needs_torchpack
def test_dist_run_ranks_agree_and_match_single_process(dist_run, single_run):
    run, proc = dist_run
    assert "launcher torchpack, world size 2, backend gloo" in proc.stdout
    dumps = _rank_dumps(run)
    assert max_abs_diff(load_weights(os.path.join(single_run, "epoch_2.pth")), dumps["rank0_final.pth"]) < 1e-5


def test_torchrun_two_processes(single_run, tmp_path):
    out = str(tmp_path / "torchrun")
    args = ["--run-dir", out, "--data.samples_per_gpu", "1", "--debug-rank-dumps", *_EXACT]
    proc = check_ok(run_tool("train", TOY_CONFIG, *args, launcher="torchrun", timeout=180))
    assert "launcher torchrun, world size 2, backend gloo" in proc.stdout
    dumps = _rank_dumps(out)
    assert max_abs_diff(load_weights(os.path.join(single_run, "epoch_2.pth")), dumps["rank0_final.pth"]) < 1e-5


@needs_mpirun
@needs_torchpack
def test_test_tool_dist_run_matches_single(dist_run, tmp_path):
    run, _ = dist_run
    ckpt = os.path.join(run, "latest.pth")
    # 5 samples over 2 ranks: the sampler pads rank 1 with a repeat of sample 0, which must be dropped
    args = ["--data.val.num_samples", "5", "--data.samples_per_gpu", "2", "--eval", "bbox"]
    single = check_ok(run_tool("test", TOY_CONFIG, ckpt, *args, "--out", str(tmp_path / "single.pkl")))
    multi = check_ok(run_tool("test", TOY_CONFIG, ckpt, *args, "--out", str(tmp_path / "multi.pkl"), launcher="torchpack", timeout=180))
    table = lambda text: [line for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
    assert table(single.stdout) == table(multi.stdout) and any("| num_samples" in line and "5 |" in line for line in table(multi.stdout))
    a, b = pickle.load(open(tmp_path / "single.pkl", "rb")), pickle.load(open(tmp_path / "multi.pkl", "rb"))
    assert len(a) == len(b) == 5
    for pa, pb in zip(a, b):
        assert torch.allclose(pa["boxes_3d"], pb["boxes_3d"], atol=1e-6)


def test_a_rank_that_stops_responding_ends_the_run_naming_it(tmp_path):
    # rank 1 hangs in its 3rd training forward pass; rank 0 waits in the gradient all-reduce
    args = ["--run-dir", str(tmp_path / "hang"), "--data.samples_per_gpu", "1", "--model.hang_at_call", "3", "--dist_timeout_s", "4", *_EXACT]
    start = time.monotonic()
    proc = run_tool("train", TOY_CONFIG, *args, launcher="torchrun", timeout=120)
    assert proc.returncode != 0 and time.monotonic() - start < 90
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: rank 0: a collective operation timed out after 4 s (dist_timeout_s): "
                      "stopped responding: rank 1 (last at epoch 1, iteration 3)"], proc.stderr[-3000:]


# ----- helpers, single process -----


def test_single_process_helpers(monkeypatch):
    for key in ("OMPI_COMM_WORLD_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert dist.detect_launcher() == "none"
    info = dist.init_distributed()
    assert (info.rank, info.world_size, info.distributed, info.backend) == (0, 1, False, None)
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.is_main_process()
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}] and dist.broadcast_object(5) == 5
    assert dist.all_reduce_mean({"x": 2.0}) == {"x": 2.0} and dist.all_reduce_flag(True) is True
    dist.barrier()
    dist.destroy_distributed()


def test_launcher_detection_and_errors(monkeypatch):
    monkeypatch.delenv("MASTER_HOST", raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert dist.detect_launcher() == "torchpack"
    with pytest.raises(dist.DistributedSetupError, match="without MASTER_HOST"):
        dist.init_distributed()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "two")
    with pytest.raises(dist.DistributedSetupError, match="OMPI_COMM_WORLD_SIZE='two'"):
        dist.init_distributed()
    monkeypatch.delenv("OMPI_COMM_WORLD_RANK")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert dist.detect_launcher() == "torchrun"
    with pytest.raises(dist.DistributedSetupError, match="MASTER_ADDR"):
        dist.init_distributed()


def test_collect_results_orders_and_drops_padding():
    # what two ranks of a padded DistributedSampler over 5 samples yield: [0, 2, 4] and [1, 3, 0]
    pairs = [(0, "p0"), (2, "p2"), (4, "p4"), (1, "p1"), (3, "p3"), (0, "p0")]
    assert collect_results(pairs, dataset_size=5) == ["p0", "p1", "p2", "p3", "p4"]
    with pytest.raises(RuntimeError, match="missing for 1 of 5 samples"):
        collect_results(pairs[:2] + pairs[3:], dataset_size=5)


# ----- the real teacher config on the small embedded dataset the session generates -----


@needs_mpirun
@needs_torchpack
def test_teacher_dist_run_ranks_agree_and_test_matches(tmp_path, teacher_fast):
    run = str(tmp_path / "teacher")
    args = ["--run-dir", run, "--iters-per-epoch", "2", "--eval_interval", "0", "--debug-rank-dumps", *teacher_fast]
    check_ok(run_tool("train", TEACHER_CONFIG, *args, launcher="torchpack", timeout=600))
    debug = os.path.join(run, "debug")
    step1 = [load_weights(os.path.join(debug, f"rank{r}_step1.pth")) for r in (0, 1)]
    final = [load_weights(os.path.join(debug, f"rank{r}_final.pth")) for r in (0, 1)]
    # parameters agree after one step; BatchNorm statistics are per rank until the epoch-end broadcast
    assert max_abs_diff(step1[0], step1[1], parameters_only=True) == 0.0
    assert max_abs_diff(final[0], final[1]) == 0.0
    ckpt = os.path.join(run, "epoch_1.pth")
    test_args = ["--eval", "bbox", *teacher_fast]
    single = check_ok(run_tool("test", TEACHER_CONFIG, ckpt, *test_args, timeout=600))
    multi = check_ok(run_tool("test", TEACHER_CONFIG, ckpt, *test_args, launcher="torchpack", timeout=600))
    table = lambda text: [line for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
    assert table(single.stdout) and table(single.stdout) == table(multi.stdout)
