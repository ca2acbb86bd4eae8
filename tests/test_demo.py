"""A miniature ``make demo``: two generated scenes, two iterations per model, one evaluation each,
one render; then a second run that reuses every stage's outputs."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

from tool_runner import REPO, tool_env

MODELS = ("synthetic/det/centerhead/second/camera+lidar/convfuser", "synthetic/det/centerhead/second/camera/lss_depth",
          "synthetic/distill/tig/convfuser")


def _demo(data, runs):
    cmd = [sys.executable, os.path.join(REPO, "tools", "demo.py"), "--root-path", str(data), "--scenes", "2",
           "--keyframes", "4", "--epochs", "1", "--iters-per-epoch", "2", "--np", "1", "--viz-samples", "1",
           "--run-root", str(runs)]
    proc = subprocess.run(cmd, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_miniature_demo_runs_every_stage_and_resumes(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    out = _demo(data, runs)
    assert (data / "nuscenes_infos_train.pkl").is_file() and (data / "nuscenes_infos_val.pkl").is_file()
    for model in MODELS:
        run_dir = runs / model
        assert (run_dir / "epoch_1.pth").is_file(), model
        metrics = json.loads((run_dir / "demo_eval" / "metrics.json").read_text())
        assert all(math.isfinite(metrics[k]) for k in ("mAP", "NDS", "mATE", "mASE")), (model, metrics)
    index = runs / "viz" / "index.html"
    assert index.is_file() and list((runs / "viz").rglob("*.png"))
    assert f"open {index}" in out
    table = out[out.index("student - baseline"):].splitlines()[0]
    assert len(re.findall(r"[+-]\d\.\d{4}", table)) == 7  # the gain in each of the seven metrics
    assert "make demo: total run time" in out

    again = _demo(data, runs)  # every stage reused: nothing trained, evaluated or rendered again
    assert "reusing the dataset" in again and again.count("reusing ") >= 1 + 2 * len(MODELS) + 1
    assert "$ " not in again
