"""Training-step cost of the distillers, measured in one process on two real training batches.

    python benchmarks/step_cost.py [--root data/benchmark] [--teacher-checkpoint CKPT] [--cpu-time]

Prints, as medians over repeats: the BEVDepth-style student's training step (forward + backward),
the TiG losses alone (forward + backward from the feature maps, at the synthetic lattice 8 and the
paper's 24) and the whole distillation step (teacher forward included), with their ratios; then
the step of every other distiller (``DISTILLERS``) and of the SimDistill student alone, as ratios to
the same baseline step. Every case runs once per round, rounds repeat (``--repeats``), and each
ratio is the median over rounds of the case's time over the baseline's in that round: on a machine
whose speed drifts (other jobs, clocks) a ratio of separately timed medians moved by 0.1-0.3x.
Teachers other than the camera+LiDAR one keep random weights (the cost does not depend on them).
``--cpu-time``: this process's CPU time on one thread instead of wall time (steadier on a machine
shared with other jobs).
Targets (issue 10): TiG losses < 10 % of a student step; distillation step < 1.6x a baseline step.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmdet3d.apis.benchmark import machine_description, timed_call  # noqa: E402
from mmdet3d.apis.runner import build_dataset_from_config  # noqa: E402
from mmdet3d.datasets.pipelines.formatting import collate  # noqa: E402
from mmdet3d.models import build_model  # noqa: E402
from mmdet3d.models.distillers import named_tensors  # noqa: E402
from mmdet3d.utils.config import load_config  # noqa: E402

TIG = "configs/synthetic/distill/tig/convfuser.yaml"
BASELINE = "configs/synthetic/det/centerhead/second/camera/lss_depth.yaml"
SIMDISTILL_STUDENT = "configs/synthetic/det/centerhead/second/camera/simdistill/deform_attn.yaml"
DISTILLERS = {  # row -> config; the camera+LiDAR teacher's checkpoint is used where it is that teacher
    "SimDistill": "configs/synthetic/distill/simdistill/convfuser.yaml",
    "LGKD, camera+LiDAR teacher": "configs/synthetic/distill/lgkd/convfuser.yaml",
    "LGKD, larger camera-only teacher": "configs/synthetic/distill/lgkd/camera_large.yaml",
    "self-assessment, anchor tokens": "configs/synthetic/distill/self_assessment/anchor.yaml",
    "self-assessment, sequence-level": "configs/synthetic/distill/self_assessment/sequence.yaml",
    "TiG + SimDistill": "configs/synthetic/distill/combined/tig_simdistill.yaml",
}


def _cpu_call(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def training_step_call(model, batches):
    """One training step per call, alternating the batches: each step sees new camera matrices, so no
    lift reuses the splat structure of the step before (a real epoch never repeats a batch)."""
    order = itertools.cycle(batches)

    def run():
        model.zero_grad(set_to_none=True)
        sum(model(next(order)).values()).backward()
    return run


def interleaved_times(cases: dict, repeats: int, timer=timed_call, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every case, in ``repeats`` rounds that run each case once: a change of the
    machine's speed (other jobs, clocks) reaches all cases of a round alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timer(fn))
    return times


def round_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``name``'s time over ``base``'s in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def _losses_call(distiller, batch, lattice: int):
    """The TiG losses alone (forward + backward from the feature maps) at ``lattice``."""
    with torch.no_grad():
        teacher = named_tensors(distiller.teacher.extract_features(batch), None)
    features, preds = distiller.student.forward_features(batch)
    leaves = {k: (v.detach().requires_grad_() if torch.is_tensor(v) else v) for k, v in named_tensors(features, preds).items()}
    losses = copy.deepcopy(distiller.distill_losses)
    for loss in losses:
        if hasattr(loss, "lattice"):
            loss.lattice = lattice

    def run():
        context = dict(distiller.context, cache={})  # as in a training step: one keypoint sampling
        sum(loss(leaves, teacher, batch, context) for loss in losses).backward()
    return run


def step_cost_lines(root: str, teacher_checkpoint, repeats: int = 9, timer=timed_call) -> list[str]:
    """The table rows: every case timed in the same interleaved rounds as the baseline student step;
    ratios are medians over rounds of the case's time over the baseline's."""
    overrides = ["--dataset_root", str(root).rstrip("/") + "/"]
    has_teacher = Path(teacher_checkpoint).is_file()
    cfg = load_config(str(ROOT / TIG), overrides + ["--model.teacher_checkpoint", str(teacher_checkpoint) if has_teacher else "null"])
    dataset = build_dataset_from_config(cfg, "train")
    size = cfg["data"]["samples_per_gpu"]
    batches = [collate([dataset[i] for i in range(start, start + size)]) for start in (0, size)]
    torch.manual_seed(0)
    baseline = build_model(load_config(str(ROOT / BASELINE), overrides)["model"]).train()
    distiller = build_model(cfg["model"]).train()
    cases = {"baseline": training_step_call(baseline, batches), "tig": training_step_call(distiller, batches),
             "losses 8": _losses_call(distiller, batches[0], 8), "losses 24": _losses_call(distiller, batches[0], 24)}
    torch.manual_seed(0)
    cases["simdistill student"] = training_step_call(build_model(load_config(str(ROOT / SIMDISTILL_STUDENT), overrides)["model"]).train(), batches)
    teacher = cfg["model"]["teacher"]
    for name, config in DISTILLERS.items():
        other = load_config(str(ROOT / config), overrides)
        own = other["model"]["teacher"] == teacher and has_teacher
        other["model"]["teacher_checkpoint"] = str(teacher_checkpoint) if own else None
        torch.manual_seed(0)
        cases[name] = training_step_call(build_model(other["model"]).train(), batches)
    times = interleaved_times(cases, repeats, timer)

    def ms(name: str) -> float:
        return statistics.median(times[name]) * 1e3

    lines = [f"Machine: {machine_description()}", "", "| what | median ms | ratio |", "|---|---|---|",
             f"| BEVDepth-style student step (fwd + bwd, batch {size}) | {ms('baseline'):.0f} | 1.00 |",
             f"| TiG distillation step (teacher fwd included) | {ms('tig'):.0f} | **{round_ratio(times, 'tig', 'baseline'):.2f}x** (target < 1.6x) |"]
    for lattice, target in ((8, "target < 10 %"), (24, "the paper's lattice, reported")):
        lines.append(f"| TiG losses alone, lattice {lattice} (fwd + bwd) | {ms(f'losses {lattice}'):.1f} | "
                     f"**{round_ratio(times, f'losses {lattice}', 'baseline'):.1%}** of a student step ({target}) |")
    lines.append(f"| SimDistill student alone (fwd + bwd, no teacher) | {ms('simdistill student'):.0f} | "
                 f"{round_ratio(times, 'simdistill student', 'baseline'):.2f}x |")
    for name in DISTILLERS:
        lines.append(f"| {name} distillation step (teacher fwd included) | {ms(name):.0f} | **{round_ratio(times, name, 'baseline'):.2f}x** |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/benchmark")
    parser.add_argument("--teacher-checkpoint", default="runs/benchmark/synthetic_det_centerhead_second_camera+lidar_convfuser/latest.pth")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--cpu-time", action="store_true", help="CPU time of this process on one thread, not wall time")
    args = parser.parse_args()
    if args.cpu_time:
        torch.set_num_threads(1)
    timer = _cpu_call if args.cpu_time else timed_call
    print("\n".join(step_cost_lines(args.root, args.teacher_checkpoint, args.repeats, timer)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
