"""Optimiser from config: AdamW with per-module learning-rate multipliers, clipping, AMP, accumulation.

Config keys (all optional except ``optimizer.lr``)::

    optimizer:
      type: AdamW            # AdamW | Adam | SGD
      lr: 2.0e-4
      weight_decay: 0.01
      paramwise_cfg:         # module-path prefix -> lr multiplier, or {lr_mult, decay_mult}
        encoders.camera.backbone: 0.1
    optimizer_config:
      grad_clip: {max_norm: 35, norm_type: 2}   # or null
      cumulative_iters: 1    # gradient accumulation: one optimiser step every k iterations
    fp16: false              # mixed precision (CUDA only; ignored with a warning on CPU)

A ``paramwise_cfg`` key matches a parameter whose name equals the key or starts with
``key + "."``; the longest matching key wins. Frozen parameters (``requires_grad=False``, e.g. a
distillation teacher) are left out of the optimiser.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from mmdet3d.utils.config import ConfigError

__all__ = ["build_optimizer", "parse_paramwise_cfg", "GradientStepper"]

_OPTIMIZERS = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD}
_NO_RULE = {"lr_mult": 1.0, "decay_mult": 1.0}


def parse_paramwise_cfg(paramwise_cfg: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """``{prefix: 0.1}`` or ``{prefix: {lr_mult, decay_mult}}`` -> ``{prefix: {lr_mult, decay_mult}}``."""
    rules: dict[str, dict[str, float]] = {}
    for prefix, value in (paramwise_cfg or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rule = {"lr_mult": float(value), "decay_mult": 1.0}
        elif isinstance(value, Mapping) and set(value) <= {"lr_mult", "decay_mult"}:
            rule = {"lr_mult": float(value.get("lr_mult", 1.0)), "decay_mult": float(value.get("decay_mult", 1.0))}
        else:
            raise ConfigError(
                f"optimizer.paramwise_cfg.{prefix}: expected a number (lr multiplier) or "
                f"{{lr_mult: x, decay_mult: y}}, got {value!r}"
            )
        if rule["lr_mult"] < 0 or rule["decay_mult"] < 0:
            raise ConfigError(f"optimizer.paramwise_cfg.{prefix}: multipliers must be >= 0, got {value!r}")
        rules[str(prefix)] = rule
    return rules


def _matching_rule(name: str, prefixes: list[str]) -> str | None:
    for prefix in prefixes:  # sorted longest first
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` (the ``optimizer`` section) over the trainable parameters of ``model``.

    Parameters are grouped by the ``paramwise_cfg`` rule that matches them; the group without a
    rule comes first (its ``lr`` is the one the tools log). Each group records ``name`` and
    ``lr_mult`` so the schedule and logs can tell them apart.
    """
    cfg = dict(cfg)
    opt_type = cfg.pop("type", "AdamW")
    if opt_type not in _OPTIMIZERS:
        raise ConfigError(f"optimizer.type {opt_type!r} is not supported; choose one of {', '.join(_OPTIMIZERS)}")
    if "lr" not in cfg:
        raise ConfigError("optimizer.lr is missing")
    rules = parse_paramwise_cfg(cfg.pop("paramwise_cfg", None))
    base_lr = float(cfg.pop("lr"))
    base_wd = float(cfg.pop("weight_decay", 0.0))
    prefixes = sorted(rules, key=len, reverse=True)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
    groups: dict[str | None, list[nn.Parameter]] = {None: []}
    for name, param in named:
        groups.setdefault(_matching_rule(name, prefixes), []).append(param)
    unused = [p for p in rules if p not in groups]
    if unused:
        modules = [n for n, _ in model.named_modules() if n]
        hints = []
        for prefix in unused:
            close = difflib.get_close_matches(prefix, modules, n=3, cutoff=0.5)
            hints.append(f"{prefix!r}" + (f" (closest modules: {', '.join(close)})" if close else ""))
        raise ConfigError(f"optimizer.paramwise_cfg keys match no trainable parameter: {'; '.join(hints)}")

    param_groups = []
    for prefix, params in groups.items():
        if not params:
            continue
        rule = rules.get(prefix, _NO_RULE)  # prefix None: the parameters no rule matches
        param_groups.append(
            {
                "params": params,
                "name": prefix or "default",
                "lr_mult": rule["lr_mult"],
                "lr": base_lr * rule["lr_mult"],
                "weight_decay": base_wd * rule["decay_mult"],
            }
        )
    try:
        return _OPTIMIZERS[opt_type](param_groups, lr=base_lr, weight_decay=base_wd, **cfg)
    except TypeError as e:
        raise ConfigError(f"optimizer ({opt_type}) got an unsupported option: {e}") from None


class GradientStepper:
    """Backward, gradient accumulation, clipping, AMP loss scaling and the optimiser/schedule step.

    Per iteration call ``backward(loss, last_in_epoch)``; it returns ``True`` when an optimiser
    step happened (every ``cumulative_iters`` iterations, and at the end of each epoch so no
    partial accumulation crosses an epoch). The loss is divided by the number of iterations in its
    accumulation group, so k accumulated batches equal one batch k times as large.
    Use ``no_sync_context(model, last_in_epoch)`` around the forward pass for DDP.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        grad_clip: Mapping[str, Any] | None = None,
        cumulative_iters: int = 1,
        fp16: bool = False,
        iters_per_epoch: int | None = None,
    ):
        if int(cumulative_iters) < 1:
            raise ConfigError(f"optimizer_config.cumulative_iters must be >= 1, got {cumulative_iters!r}")
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_clip = dict(grad_clip) if grad_clip else None
        if self.grad_clip is not None and "max_norm" not in self.grad_clip:
            raise ConfigError(f"optimizer_config.grad_clip needs max_norm, got {grad_clip!r}")
        self.cumulative_iters = int(cumulative_iters)
        self.iters_per_epoch = iters_per_epoch
        self.fp16 = bool(fp16)
        self.scaler = torch.amp.GradScaler("cuda") if self.fp16 else None
        self.last_grad_norm: float | None = None

    def group_size(self, iter_in_epoch: int) -> int:
        """How many iterations share the accumulation group of ``iter_in_epoch``."""
        k = self.cumulative_iters
        if self.iters_per_epoch is None:
            return k
        start = (iter_in_epoch // k) * k
        return min(k, self.iters_per_epoch - start)

    def is_step_iter(self, iter_in_epoch: int) -> bool:
        last = self.iters_per_epoch is not None and iter_in_epoch == self.iters_per_epoch - 1
        return (iter_in_epoch + 1) % self.cumulative_iters == 0 or last

    def no_sync_context(self, model: nn.Module, iter_in_epoch: int):
        """``model.no_sync()`` for DDP iterations that only accumulate; a null context otherwise."""
        if self.cumulative_iters > 1 and not self.is_step_iter(iter_in_epoch) and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def autocast(self, device: torch.device):
        if self.fp16 and device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _params(self) -> Iterator[nn.Parameter]:
        for group in self.optimizer.param_groups:
            yield from (p for p in group["params"] if p.grad is not None)

    def backward(self, loss: torch.Tensor, iter_in_epoch: int) -> bool:
        loss = loss / self.group_size(iter_in_epoch)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if not self.is_step_iter(iter_in_epoch):
            return False
        self.step()
        return True

    def step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            params = list(self._params())
            if params:
                norm = nn.utils.clip_grad_norm_(params, **self.grad_clip)
                self.last_grad_norm = float(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
