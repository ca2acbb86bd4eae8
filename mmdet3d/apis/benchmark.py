"""Latency of a model's stages with forward hooks, and end-to-end latency/throughput.

``StageTimer`` hooks the submodules named by the BEVFusion stage list (those present in the
model); a container that is never called itself (``ModuleDict``, ``ModuleList``) is timed as the
sum of its children. Each timed call is bracketed by ``torch.cuda.synchronize()`` on CUDA, so
stage times are device times, not launch times. ``measure_latency`` runs warm-up passes and
then reports the median over repeats. ``machine_description`` names the machine a timing ran on.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["DEFAULT_STAGES", "StageTimer", "timed_call", "measure_latency", "format_latency_table", "find_stage_prefix",
           "cpu_model_name", "machine_description"]

DEFAULT_STAGES: list[tuple[str, str]] = [
    ("camera backbone", "encoders.camera.backbone"),
    ("camera neck", "encoders.camera.neck"),
    ("view transform", "encoders.camera.vtransform"),
    ("simulated-LiDAR branch", "encoders.sim_lidar"),  # SimDistill's second lift, compensation and T
    ("lidar encoder", "encoders.lidar"),
    ("fuser", "fuser"),
    ("decoder", "decoder"),
    ("heads", "heads"),
]


def timed_call(fn: Callable[[], Any], sync: bool = False) -> float:
    """Wall seconds of ``fn()``; with ``sync`` bracketed by ``torch.cuda.synchronize()`` (device time)."""
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def cpu_model_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """One line naming what a timing ran on (CPU, cores, torch threads, GPU): step-time ratios and
    training times differ between machines by up to 2x (benchmarks/RESULTS.md)."""
    line = f"{cpu_model_name()}, {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} thread(s)"
    if torch.cuda.is_available():
        line += f", {torch.cuda.get_device_name()}"
    return line


def _get_submodule(model: nn.Module, dotted: str) -> nn.Module | None:
    node: nn.Module | None = model
    for part in dotted.split("."):
        node = node._modules.get(part)
        if node is None:
            return None
    return node


def find_stage_prefix(model: nn.Module, stages: Sequence[tuple[str, str]] = DEFAULT_STAGES) -> str:
    """``""`` if the stages are top-level; ``"student."`` etc. for a wrapper holding them."""
    if any(_get_submodule(model, path) is not None for _, path in stages):
        return ""
    for name, child in model.named_children():
        if any(_get_submodule(child, path) is not None for _, path in stages):
            return name + "."
    return ""


def _callable_modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, (nn.ModuleDict, nn.ModuleList)):
        out: list[nn.Module] = []
        for child in module.children():
            out.extend(_callable_modules(child))
        return out
    return [module]


class StageTimer:
    """Accumulates wall time per stage over one or more forward passes."""

    def __init__(self, model: nn.Module, stages: Sequence[tuple[str, str]] = DEFAULT_STAGES, prefix: str = "", sync: bool = False):
        self.sync = sync
        self.stages: list[str] = []
        self.times: dict[str, float] = {}
        self._handles: list[Any] = []
        self._starts: dict[int, list[float]] = {}
        for label, path in stages:
            module = _get_submodule(model, prefix + path)
            if module is None:
                continue
            self.stages.append(label)
            self.times[label] = 0.0
            for target in _callable_modules(module):
                self._handles.append(target.register_forward_pre_hook(self._pre_hook()))
                self._handles.append(target.register_forward_hook(self._post_hook(label)))

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _pre_hook(self) -> Callable:
        def hook(module: nn.Module, args: Any) -> None:
            self._starts.setdefault(id(module), []).append(self._now())

        return hook

    def _post_hook(self, label: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            start = self._starts[id(module)].pop()
            self.times[label] += self._now() - start

        return hook

    def reset(self) -> None:
        for label in self.times:
            self.times[label] = 0.0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    batch: Any,
    batch_size: int,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 10,
    stages: Sequence[tuple[str, str]] = DEFAULT_STAGES,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Median seconds per stage and end to end over ``repeats`` forward passes after ``warmup``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model.eval()
    sync = device.type == "cuda"
    prefix = find_stage_prefix(model, stages)
    timer = StageTimer(model, stages=stages, prefix=prefix, sync=sync)
    per_stage: dict[str, list[float]] = {label: [] for label in timer.stages}
    totals: list[float] = []
    try:
        for i in range(warmup + repeats):
            timer.reset()
            elapsed = timed_call(lambda: model(batch), sync)
            if i >= warmup:
                totals.append(elapsed)
                for label in timer.stages:
                    per_stage[label].append(timer.times[label])
            if progress is not None:
                progress(1)
    finally:
        timer.remove()
    total = statistics.median(totals)
    stage_medians = {label: statistics.median(values) for label, values in per_stage.items()}
    return {
        "stages": stage_medians,
        "total": total,
        "other": max(0.0, total - sum(stage_medians.values())),
        "throughput": batch_size / total if total > 0 else float("inf"),
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "prefix": prefix,
    }


def format_latency_table(result: dict[str, Any], title: str = "stage") -> str:
    rows = [(label, seconds) for label, seconds in result["stages"].items()]
    rows.append(("other (glue, post-processing)", result["other"]))
    total = result["total"]
    width = max(len(title), len("end to end"), *(len(label) for label, _ in rows))
    line = f"+-{'-' * width}-+-{'-' * 12}-+-{'-' * 7}-+"
    out = [line, f"| {title:<{width}} | {'median ms':>12} | {'share':>7} |", line]
    for label, seconds in rows:
        share = 100.0 * seconds / total if total > 0 else 0.0
        out.append(f"| {label:<{width}} | {seconds * 1e3:12.2f} | {share:6.1f}% |")
    out.append(line)
    out.append(f"| {'end to end':<{width}} | {total * 1e3:12.2f} | {100.0:6.1f}% |")
    out.append(line)
    out.append(f"throughput: {result['throughput']:.2f} samples/s (batch {result['batch_size']}, median of {result['repeats']} after {result['warmup']} warm-up)")
    return "\n".join(out)
