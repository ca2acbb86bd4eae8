"""Checkpoints: atomic save, ``latest.pth`` link, loading with readable errors.

A checkpoint is a dict::

    {"state_dict": model weights (no DDP "module." prefix),
     "optimizer": ..., "scheduler": ..., "stepper": ... (AMP scaler),
     "meta": {"epoch": completed epochs, "iter": optimiser steps, "config": resolved config,
              "torch": version, "time": ...}}

Files are written to ``<name>.tmp-<pid>`` and renamed, so a crash never leaves a half-written
checkpoint under the real name; ``latest.pth`` is a relative symlink replaced atomically too
(a copy where symlinks are not supported).
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any, Mapping

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "unwrap_model",
    "cpu_state_dict",
    "save_checkpoint",
    "update_latest_link",
    "find_latest_checkpoint",
    "load_checkpoint_file",
    "load_model_weights",
]

LATEST = "latest.pth"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model; the message names the file."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's weights and buffers, detached, on the CPU."""
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}


def save_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    stepper: Any = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """Write a checkpoint atomically; returns ``path``."""
    state = {
        "state_dict": cpu_state_dict(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "stepper": stepper.state_dict() if stepper is not None else None,
        "meta": {"torch": str(torch.__version__), "time": time.strftime("%Y-%m-%d %H:%M:%S"), **dict(meta or {})},
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def update_latest_link(run_dir: str, filename: str) -> str:
    """Point ``run_dir/latest.pth`` at ``filename`` (a file in ``run_dir``); returns the link path."""
    link = os.path.join(run_dir, LATEST)
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.symlink(filename, tmp)
    except OSError:  # filesystems without symlinks: copy (atomically) instead
        shutil.copyfile(os.path.join(run_dir, filename), tmp)
    os.replace(tmp, link)
    return link


def find_latest_checkpoint(run_dir: str) -> str | None:
    """``run_dir/latest.pth`` if it resolves to a file, else the highest ``epoch_N.pth``, else None."""
    link = os.path.join(run_dir, LATEST)
    if os.path.isfile(link):
        return link
    epochs = []
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            stem, ext = os.path.splitext(name)
            if ext == ".pth" and stem.startswith("epoch_") and stem[6:].isdigit():
                epochs.append((int(stem[6:]), name))
    return os.path.join(run_dir, max(epochs)[1]) if epochs else None


def load_checkpoint_file(path: str, map_location: str | torch.device = "cpu", weights_only: bool = False) -> dict[str, Any]:
    """Read a checkpoint; a bare state dict is wrapped as ``{"state_dict": ...}``.

    ``weights_only`` is ``torch.load``'s (True for third-party weights: tensors and plain containers only).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # truncated file, not a torch file, ...
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights")
    if "state_dict" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            ckpt = {"state_dict": dict(ckpt)}
        elif "model" in ckpt and isinstance(ckpt["model"], Mapping):
            ckpt = {**ckpt, "state_dict": ckpt["model"]}
        else:
            raise CheckpointError(f"checkpoint {path} has no 'state_dict' (keys: {', '.join(map(str, list(ckpt)[:8]))})")
    state = ckpt["state_dict"]
    if state and all(str(k).startswith("module.") for k in state):
        ckpt["state_dict"] = {k[len("module."):]: v for k, v in state.items()}
    return dict(ckpt)


def _preview(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_model_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool, source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """Copy matching weights into ``model``; returns (missing, unexpected) key lists.

    Always an error: a shape mismatch, or no key in common (a checkpoint of another
    architecture). With ``strict``, any missing or unexpected key is an error too.
    """
    model = unwrap_model(model)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    common = len(own) - len(missing)
    if common == 0 and own:
        raise CheckpointError(
            f"{source} does not fit this model: none of its {len(state_dict)} keys match the model's "
            f"{len(own)} keys (is it from a different architecture?); model keys: {_preview(list(own))}; "
            f"checkpoint keys: {_preview(unexpected)}"
        )
    if mismatched:
        raise CheckpointError(f"{source} does not fit this model: shape mismatch for {_preview(mismatched, 3)}")
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        raise CheckpointError(f"{source} does not fit this model (different architecture?): {'; '.join(parts)}")
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return missing, unexpected
