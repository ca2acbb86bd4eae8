"""benchmarks/distillation.py reuses a finished run only while it stands for its config and teacher."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from mmdet3d.utils.config import dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]
TIG = "configs/synthetic/distill/tig/convfuser.yaml"


def _benchmark():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("distillation_benchmark", ROOT / "benchmarks/distillation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _student_run(tmp_path: Path, teacher: Path, overrides: list[str]) -> Path:
    run_dir = tmp_path / "student"
    run_dir.mkdir()
    dump_config(load_config(str(ROOT / TIG), overrides), str(run_dir / "configs.yaml"))
    return run_dir


def test_stale_when_the_teacher_checkpoint_or_the_config_changes(tmp_path):
    bench = _benchmark()
    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(b"teacher weights, version 1")
    os.utime(teacher, (0, 0))  # written before the student run started
    overrides = ["--dataset_root", "data/benchmark/", "--seed", "0", "--model.teacher_checkpoint", str(teacher)]
    run_dir = _student_run(tmp_path, teacher, overrides)
    # a run from before teacher.json: the older teacher file is taken as its teacher and recorded
    assert bench.stale_reason(TIG, run_dir, overrides, teacher) is None
    assert json.loads((run_dir / "teacher.json").read_text())["sha256"] == bench.file_sha256(teacher)
    # the checkpoint's place does not matter, its content does
    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes(teacher.read_bytes())
    assert bench.stale_reason(TIG, run_dir, overrides[:-1] + [str(moved)], moved) is None
    teacher.write_bytes(b"teacher weights, version 2")
    assert "another checkpoint" in bench.stale_reason(TIG, run_dir, overrides, teacher)
    # a model change in the config (here: a loss weight) makes the run stale too
    changed = overrides[:4] + ["--model.distill_losses.0.weight", "0.5"]
    assert "in model" in bench.stale_reason(TIG, run_dir, changed, None)


def test_a_legacy_run_older_than_its_teacher_is_stale(tmp_path):
    bench = _benchmark()
    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(b"teacher weights")
    overrides = ["--dataset_root", "data/benchmark/", "--seed", "0", "--model.teacher_checkpoint", str(teacher)]
    run_dir = _student_run(tmp_path, teacher, overrides)
    os.utime(run_dir / "configs.yaml", (0, 0))  # the run started before the teacher file was written
    assert "written after" in bench.stale_reason(TIG, run_dir, overrides, teacher)
    assert not (run_dir / "teacher.json").exists()


def test_machine_description_names_the_cpu_threads_and_torch(tmp_path):
    """Step-cost ratios and training times are machine figures: the benchmarks print what they ran on."""
    import torch

    from mmdet3d.apis.benchmark import cpu_model_name, machine_description

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14 96-Core\nflags\t: fpu\n")
    assert cpu_model_name(str(cpuinfo)) == "AMD EPYC 9B14 96-Core"
    assert cpu_model_name(str(tmp_path / "missing")) != ""
    line = machine_description()
    assert f"torch {torch.__version__}" in line and f"{torch.get_num_threads()} thread" in line
    assert line.startswith(cpu_model_name())
