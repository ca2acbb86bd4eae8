"""Checkpoints: atomic save, ``latest.pth`` link, safe loading, key prefixes for teacher-student pairs.

A checkpoint is a dict::

    {"state_dict": model weights (no DDP "module." prefix, excluded prefixes left out),
     "optimizer": ..., "scheduler": ..., "stepper": ... (AMP scaler),
     "meta": {"epoch": completed epochs, "iter": optimiser steps, "config": resolved config,
              "torch": version, "time": ...}}

Everything in it is a tensor, number, string, ``None``, list, tuple or dict, so it loads with
``torch.load(weights_only=True)``: loading never runs code hidden in a file. ``save_checkpoint``
converts numpy values, paths and devices, and refuses other objects naming where they sit.

Files are written to ``<name>.tmp-<pid>`` and renamed, so a crash never leaves a half-written
checkpoint under the real name; ``latest.pth`` is a relative symlink replaced atomically too
(a copy where symlinks are not supported). ``remove_stale_temporary_files`` clears what a killed
writer left behind.

Prefixes: a model may declare ``checkpoint_exclude = ("teacher.",)``; those keys are neither
saved nor expected when loading (a frozen teacher is rebuilt from its own checkpoint).
``load_model_weights(into="teacher.")`` loads a plain model's checkpoint into a sub-module and
``from_prefix="student."`` takes the student's part of a distiller's checkpoint.
"""
from __future__ import annotations

import enum
import errno
import os
import pickle
import re
import shutil
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "LoadReport",
    "unwrap_model",
    "checkpoint_exclude",
    "cpu_state_dict",
    "strip_prefix",
    "add_prefix",
    "drop_prefixes",
    "to_plain",
    "save_checkpoint",
    "update_latest_link",
    "find_latest_checkpoint",
    "find_resumable_checkpoint",
    "remove_stale_temporary_files",
    "load_checkpoint_file",
    "load_model_weights",
    "load_inference_weights",
]

LATEST = "latest.pth"
STUDENT = "student."
_TMP = re.compile(r"\.tmp-(\d+)$")
_EPOCH = re.compile(r"^epoch_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe, unwritable or does not fit the model; the message names the file."""


class LoadReport(NamedTuple):
    """Keys of the target module absent from the checkpoint, and checkpoint keys it has no use for."""

    missing_keys: list[str]
    unexpected_keys: list[str]

    def summary(self, n: int = 5) -> str:
        parts = [f"{len(self.missing_keys)} missing keys", f"{len(self.unexpected_keys)} unexpected keys"]
        if self.missing_keys:
            parts.append(f"missing: {_preview(self.missing_keys, n)}")
        if self.unexpected_keys:
            parts.append(f"unexpected: {_preview(self.unexpected_keys, n)}")
        return "; ".join(parts)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def checkpoint_exclude(model: nn.Module) -> tuple[str, ...]:
    """The key prefixes ``model`` keeps out of its checkpoints (its ``checkpoint_exclude`` attribute)."""
    return tuple(getattr(unwrap_model(model), "checkpoint_exclude", ()) or ())


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose key starts with ``prefix``, without it; the others are dropped."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def add_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def drop_prefixes(state: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, Any]:
    """The entries whose key starts with none of ``prefixes``."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}


def cpu_state_dict(model: nn.Module, exclude: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The unwrapped model's weights and buffers, detached, on the CPU, without the ``exclude``
    prefixes (default: the model's ``checkpoint_exclude``)."""
    exclude = checkpoint_exclude(model) if exclude is None else tuple(exclude)
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    return drop_prefixes(state, exclude)


def to_plain(obj: Any, where: str = "checkpoint", tuples_to_lists: bool = False) -> Any:
    """``obj`` with numpy values, paths, enums, devices and dtypes turned into what
    ``torch.load(weights_only=True)`` reads; any other object is a ``TypeError`` naming ``where``."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value, where, tuples_to_lists)
    if isinstance(obj, (os.PathLike, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, Mapping):
        return {to_plain(k, where) if not isinstance(k, (str, int)) else k: to_plain(v, f"{where}[{k!r}]", tuples_to_lists)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]", tuples_to_lists) for i, v in enumerate(obj)]
        return items if tuples_to_lists or isinstance(obj, list) else tuple(items)
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only tensors, "
                    f"numbers, strings, lists and dicts")


class _RecordingWriter:
    """A file wrapper that remembers the ``OSError`` of a failed write: torch's zip writer
    replaces it by an internal ``enforce fail at inline_container.cc`` message."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _write_failure(path: str, e: BaseException, recorded: OSError | None) -> CheckpointError:
    cause = recorded or (e if isinstance(e, OSError) else None)
    if cause is not None and cause.errno == errno.ENOSPC:
        reason = "no space left on device"
    elif cause is not None:
        reason = cause.strerror or str(cause)
    else:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return CheckpointError(f"cannot write checkpoint {path}: {reason}")


def save_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    stepper: Any = None,
    meta: Mapping[str, Any] | None = None,
    exclude: Sequence[str] | None = None,
) -> str:
    """Write a checkpoint atomically; returns ``path``.

    ``exclude``: key prefixes left out of the weights (default: the model's ``checkpoint_exclude``).
    A failed write (full disk, unwritable folder) is a ``CheckpointError`` naming ``path``; the
    file previously under ``path`` is kept.
    """
    try:
        state = {
            "state_dict": cpu_state_dict(model, exclude),
            "optimizer": to_plain(optimizer.state_dict(), "optimizer") if optimizer is not None else None,
            "scheduler": to_plain(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
            "stepper": to_plain(stepper.state_dict(), "stepper") if stepper is not None else None,
            "meta": to_plain({"torch": str(torch.__version__), "time": time.strftime("%Y-%m-%d %H:%M:%S"), **dict(meta or {})},
                             "meta", tuples_to_lists=True),
        }
    except TypeError as e:
        raise CheckpointError(f"cannot save checkpoint {path}: {e}") from None
    tmp = f"{path}.tmp-{os.getpid()}"
    writer = None
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise _write_failure(path, e, writer.error if writer else None) from e
    finally:
        if os.path.lexists(tmp):
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


def _epoch_files(run_dir: str) -> list[str]:
    """``epoch_N.pth`` paths of ``run_dir``, highest N first (numeric order)."""
    if not os.path.isdir(run_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(run_dir) if (m := _EPOCH.match(name))]
    return [os.path.join(run_dir, name) for _, name in sorted(found, reverse=True)]


def find_latest_checkpoint(run_dir: str) -> str | None:
    """``run_dir/latest.pth`` if it resolves to a file, else the highest ``epoch_N.pth``, else None."""
    link = os.path.join(run_dir, LATEST)
    if os.path.isfile(link):
        return link
    epochs = _epoch_files(run_dir)
    return epochs[0] if epochs else None


def find_resumable_checkpoint(run_dir: str) -> tuple[str | None, list[str]]:
    """The newest checkpoint of ``run_dir`` that loads: ``latest.pth``, else ``epoch_N.pth`` from the
    highest N down. Returns (path or None, one message per unreadable file passed over)."""
    skipped, seen = [], set()
    link = os.path.join(run_dir, LATEST)
    candidates = ([link] if os.path.lexists(link) else []) + _epoch_files(run_dir)
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            load_checkpoint_file(path)
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        return path, skipped
    return None, skipped


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporary_files(run_dir: str) -> list[str]:
    """Delete ``*.tmp-<pid>`` files of ``run_dir`` whose writer process is gone; returns their paths."""
    removed = []
    if not os.path.isdir(run_dir):
        return removed
    for name in sorted(os.listdir(run_dir)):
        m = _TMP.search(name)
        if m is None or (int(m.group(1)) != os.getpid() and _pid_alive(int(m.group(1)))):
            continue
        path = os.path.join(run_dir, name)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
            removed.append(path)
    return removed


_UNSAFE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_checkpoint_file(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; a bare state dict is wrapped as
    ``{"state_dict": ...}``, a ``model`` entry is taken as the state dict, a DDP ``module.``
    prefix is stripped."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _UNSAFE.search(str(e))
        if unsafe is None:
            raise CheckpointError(f"checkpoint {path} cannot be read (not a torch checkpoint, or corrupt)") from None
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors, numbers, strings, lists and dicts ({unsafe.group(1)}); "
            f"it is not loaded because unpickling it could run code. Re-save only its weights where it was made"
        ) from None
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
        ckpt["state_dict"] = strip_prefix(state, "module.")
    return dict(ckpt)


def _preview(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _target(model: nn.Module, into: str, source: str) -> nn.Module:
    model = unwrap_model(model)
    if not into:
        return model
    try:
        return model.get_submodule(into.rstrip("."))
    except AttributeError:
        raise CheckpointError(f"{source}: the model has no sub-module {into.rstrip('.')!r} to load into") from None


def load_model_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool,
    source: str = "checkpoint",
    *,
    into: str = "",
    from_prefix: str = "",
    exclude: Sequence[str] | None = None,
) -> LoadReport:
    """Copy matching weights into ``model`` (or its sub-module ``into``, e.g. ``"teacher."``).

    ``from_prefix`` (e.g. ``"student."``) takes only the checkpoint keys under it, without it.
    Model keys under ``exclude`` (default: the model's ``checkpoint_exclude`` when loading the
    whole model) are neither loaded nor reported missing. Always an error: a shape mismatch, or no
    key in common (a checkpoint of another architecture). With ``strict``, any missing or
    unexpected key is an error too.
    """
    target = _target(model, into, source)
    exclude = (checkpoint_exclude(model) if not into else ()) if exclude is None else tuple(exclude)
    if from_prefix:
        selected = strip_prefix(state_dict, from_prefix)
        if not selected and state_dict:
            raise CheckpointError(f"{source} has no keys under {from_prefix!r} (keys: {_preview(list(state_dict))})")
        state_dict = selected
    state_dict = drop_prefixes(state_dict, exclude)
    own = drop_prefixes(target.state_dict(), exclude)
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
    target.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return LoadReport(missing, unexpected)


def load_inference_weights(model: nn.Module, path: str, log: Callable[[str], Any] = print) -> LoadReport:
    """Strictly load checkpoint ``path`` into ``model`` for testing or benchmarking.

    A distillation checkpoint (``student.`` keys, maybe loss adapters beside them; never the
    teacher) loads directly into the plain model of the student's config: the student's keys
    without the prefix, and ``log`` says so.
    """
    state = load_checkpoint_file(path)["state_dict"]
    own = unwrap_model(model).state_dict()
    from_prefix = ""
    if any(k.startswith(STUDENT) for k in state) and not any(k.startswith(STUDENT) for k in own):
        from_prefix = STUDENT
        others = sum(not k.startswith(STUDENT) for k in state)
        log(f"checkpoint {path} holds a distiller's student ({STUDENT!r} keys): loading it without the prefix "
            f"into {type(unwrap_model(model)).__name__}" + (f"; {others} training-only keys (loss adapters) left out" if others else ""))
    return load_model_weights(model, state, strict=True, source=f"checkpoint {path}", from_prefix=from_prefix)
