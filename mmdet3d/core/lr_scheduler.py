"""Per-iteration learning-rate schedules: fixed, cosine (with warmup) and cyclic (one cycle).

Config (``lr_config``)::

    lr_config:
      policy: cosine          # fixed | cosine | cyclic
      warmup_iters: 500       # linear warmup (any policy); 0 or absent: none
      warmup_ratio: 0.3333    # warmup starts at warmup_ratio * lr
      min_lr_ratio: 1.0e-3    # cosine: final lr = min_lr_ratio * lr
      target_ratio: [10, 1.0e-4]   # cyclic: peak and final lr as multiples of lr
      step_ratio_up: 0.4      # cyclic: fraction of the run spent rising to the peak

Each parameter group's lr is ``initial_lr * factor(t)`` with ``t`` the number of optimiser steps
so far, so per-module multipliers keep their ratio. Cosine follows the mmcv convention: the
cosine runs over the whole schedule and the warmup multiplies it linearly from ``warmup_ratio`` to 1.
Cyclic rises from ``lr`` to ``lr * target_ratio[0]`` and falls to ``lr * target_ratio[1]``, both
halves cosine-annealed. The state is the step counter, so a resumed run continues the same curve.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from mmdet3d.utils.config import ConfigError

__all__ = ["IterLrScheduler", "build_lr_scheduler", "annealing_cos"]

POLICIES = ("fixed", "cosine", "cyclic")


def annealing_cos(start: float, end: float, progress: float) -> float:
    """Cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (math.cos(math.pi * progress) + 1.0)


class IterLrScheduler:
    """Sets every group's lr to ``initial_lr * factor(step)`` on each ``step()``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        policy: str = "fixed",
        warmup_iters: int = 0,
        warmup_ratio: float = 1.0 / 3.0,
        min_lr_ratio: float = 0.0,
        target_ratio: tuple[float, float] = (10.0, 1e-4),
        step_ratio_up: float = 0.4,
    ):
        if policy not in POLICIES:
            raise ConfigError(f"lr_config.policy {policy!r} is not supported; choose one of {', '.join(POLICIES)}")
        if total_iters < 1:
            raise ConfigError(f"the schedule needs at least one iteration, got total_iters={total_iters}")
        if not 0.0 < float(warmup_ratio) <= 1.0 and warmup_iters:
            raise ConfigError(f"lr_config.warmup_ratio must be in (0, 1], got {warmup_ratio!r}")
        if policy == "cyclic":
            if not (isinstance(target_ratio, (list, tuple)) and len(target_ratio) == 2):
                raise ConfigError(f"lr_config.target_ratio must be [peak, final], got {target_ratio!r}")
            if not 0.0 < float(step_ratio_up) < 1.0:
                raise ConfigError(f"lr_config.step_ratio_up must be in (0, 1), got {step_ratio_up!r}")
        self.optimizer = optimizer
        self.total_iters = int(total_iters)
        self.policy = policy
        self.warmup_iters = int(warmup_iters or 0)
        self.warmup_ratio = float(warmup_ratio)
        self.min_lr_ratio = float(min_lr_ratio)
        self.target_ratio = tuple(float(r) for r in target_ratio)
        self.step_ratio_up = float(step_ratio_up)
        self.last_iter = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def regular_factor(self, t: int) -> float:
        if self.policy == "fixed":
            return 1.0
        if self.policy == "cosine":
            return annealing_cos(1.0, self.min_lr_ratio, t / self.total_iters)
        up_iters = max(1, int(round(self.step_ratio_up * self.total_iters)))
        peak, final = self.target_ratio
        if t < up_iters:
            return annealing_cos(1.0, peak, t / up_iters)
        return annealing_cos(peak, final, (t - up_iters) / max(1, self.total_iters - up_iters))

    def factor(self, t: int) -> float:
        f = self.regular_factor(t)
        if t < self.warmup_iters:
            k = (1.0 - t / self.warmup_iters) * (1.0 - self.warmup_ratio)
            f *= 1.0 - k
        return f

    def _apply(self) -> None:
        f = self.factor(self.last_iter)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"last_iter": self.last_iter, "total_iters": self.total_iters, "policy": self.policy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_iter = int(state["last_iter"])
        self._apply()


def build_lr_scheduler(optimizer: torch.optim.Optimizer, lr_config: Mapping[str, Any] | None, total_iters: int) -> IterLrScheduler:
    """The schedule of ``lr_config`` over ``total_iters`` optimiser steps (``None``: fixed lr)."""
    cfg = dict(lr_config or {})
    policy = str(cfg.pop("policy", "fixed")).lower()
    if policy in ("cosineannealing", "cosine_annealing"):
        policy = "cosine"
    warmup = cfg.pop("warmup", "linear")  # mmcv spelling; linear is the only warmup
    if warmup not in ("linear", None):
        raise ConfigError(f"lr_config.warmup {warmup!r} is not supported; only 'linear'")
    cyclic_times = cfg.pop("cyclic_times", 1)
    if cyclic_times != 1:
        raise ConfigError(f"lr_config.cyclic_times {cyclic_times!r} is not supported; only one cycle (1)")
    known = {"warmup_iters", "warmup_ratio", "min_lr_ratio", "target_ratio", "step_ratio_up"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"lr_config has unknown keys {unknown}; known keys: policy, {', '.join(sorted(known))}")
    return IterLrScheduler(optimizer, total_iters=total_iters, policy=policy, **cfg)
