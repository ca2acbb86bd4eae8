"""Pieces every tool shares: run directories, component building, user-error reporting.

User errors (a wrong path, key, value or checkpoint) raise one of ``USER_ERRORS``; ``cli_main``
catches them at the top of a tool, prints one ``error: ...`` line and exits with status 2, so
the user never reads a traceback for a mistake in their command line or config.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any, Callable, Mapping

import torch

from mmdet3d.utils.checkpoint import CheckpointError
from mmdet3d.utils.config import ConfigError
from mmdet3d.utils.distributed import DistributedSetupError

__all__ = [
    "RunDirError",
    "NonFiniteLossError",
    "USER_ERRORS",
    "cli_main",
    "default_run_dir",
    "prepare_run_dir",
    "import_custom_modules",
    "build_model_from_config",
    "build_dataset_from_config",
    "configure_cpu_threads",
]


class RunDirError(RuntimeError):
    """The run directory cannot be created or written."""


class NonFiniteLossError(RuntimeError):
    """A loss term became nan/inf; training stopped before the bad step was applied."""


USER_ERRORS = (ConfigError, CheckpointError, RunDirError, NonFiniteLossError, DistributedSetupError)


def cli_main(main: Callable[[], Any]) -> Callable[[], None]:
    """Wrap a tool's ``main``: known user errors become one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            main()
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper


def default_run_dir(config_path: str, root: str = "runs") -> str:
    """``configs/a/b/c.yaml`` -> ``runs/a/b/c``; a config outside ``configs/`` -> ``runs/<stem>``."""
    path = os.path.normpath(os.path.abspath(config_path))
    parts = path.split(os.sep)
    if "configs" in parts:
        rel = parts[len(parts) - 1 - parts[::-1].index("configs") + 1 :]
    else:
        rel = [parts[-1]]
    rel[-1] = os.path.splitext(rel[-1])[0]
    return os.path.join(root, *rel)


def prepare_run_dir(run_dir: str, rank: int = 0) -> str:
    """Create ``run_dir`` and check that this process can write into it; returns the absolute path."""
    run_dir = os.path.abspath(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write-test-{os.getpid()}-{rank}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        culprit = f" ({e.filename})" if getattr(e, "filename", None) and e.filename != run_dir else ""
        raise RunDirError(f"run dir {run_dir} is not writable: {reason}{culprit}") from None
    return run_dir


def import_custom_modules(cfg: Mapping[str, Any]) -> None:
    """Import the modules listed in ``custom_imports`` (registers extra components), then the project's."""
    import mmdet3d.datasets  # noqa: F401  (registers datasets and pipelines)
    import mmdet3d.models  # noqa: F401  (registers models)

    for name in cfg.get("custom_imports") or []:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"custom_imports: cannot import {name!r} ({e})") from None


def _build(kind: str, key: str, section: Any, builder: Callable) -> Any:
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key {key!r} must be a mapping with a 'type', got {section!r}")
    try:
        return builder(dict(section))
    except KeyError as e:
        # the registries raise KeyError with a full sentence for an unknown or missing type
        message = str(e.args[0]) if e.args else ""
        if " registry" in message or "has no 'type' key" in message:
            raise ConfigError(f"{key}: {message}") from None
        raise
    except TypeError as e:
        if str(e).startswith("building "):
            raise ConfigError(f"{key}: {e}") from None
        raise


def build_model_from_config(cfg: Mapping[str, Any]) -> torch.nn.Module:
    from mmdet3d.models.builder import build_model

    if "model" not in cfg:
        raise ConfigError("config has no 'model' section")
    return _build("model", "model", cfg["model"], build_model)


def build_dataset_from_config(cfg: Mapping[str, Any], split: str) -> Any:
    """The dataset ``data.<split>`` (``train``, ``val`` or ``test``)."""
    from mmdet3d.datasets.builder import build_dataset

    data = cfg.get("data")
    if not isinstance(data, Mapping) or split not in data or data[split] is None:
        raise ConfigError(f"config has no dataset at data.{split}")
    return _build("dataset", f"data.{split}", data[split], build_dataset)


def configure_cpu_threads(local_world_size: int) -> int:
    """On CPU with several local processes, split the cores (unless OMP_NUM_THREADS is set)."""
    if local_world_size > 1 and not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // local_world_size)
        torch.set_num_threads(threads)
    return torch.get_num_threads()
