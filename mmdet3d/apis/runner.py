"""Pieces every tool shares: run directories, component building, user-error reporting.

User errors (a wrong path, key, value, data file or checkpoint, a full disk, a rank that stopped
responding) raise one of ``USER_ERRORS``; ``cli_main`` catches them at the top of a tool, prints
one ``error: ...`` line and exits with status 2, so the user never reads a traceback for a
mistake in their command line, config or data. ``--debug`` keeps the traceback.
"""
from __future__ import annotations

import argparse
import errno
import functools
import importlib
import os
import sys
from typing import Any, Callable, Mapping

import torch

from mmdet3d.datasets.nuscenes_dataset import PredictionError
from mmdet3d.utils.checkpoint import CheckpointError
from mmdet3d.utils.config import ConfigError
from mmdet3d.utils.data_files import DataFileError, MissingDataFileError
from mmdet3d.utils.distributed import CollectiveTimeoutError, DistributedSetupError

__all__ = [
    "RunDirError",
    "NonFiniteLossError",
    "USER_ERRORS",
    "cli_main",
    "add_debug_flag",
    "error_line",
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


USER_ERRORS = (
    ConfigError, CheckpointError, RunDirError, NonFiniteLossError, DistributedSetupError, CollectiveTimeoutError,
    DataFileError, MissingDataFileError, PredictionError,
)
DEBUG_FLAG = "--debug"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error instead of one 'error:' line")


def error_line(error: BaseException) -> str:
    """The message of ``error`` on one line; an error re-raised from a DataLoader worker (whose
    message holds the worker's traceback) gives the worker's own message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name, _, message = last.partition(": ")
        text = message if message and name.rsplit(".", 1)[-1] == type(error).__name__ else last
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        text = f"cannot write {error.filename or 'a file'}: no space left on device"
    return " ".join(text.split())


def cli_main(main: Callable[..., Any] | None = None, *, extra_errors: tuple[type[BaseException], ...] = ()) -> Callable[..., Any]:
    """Wrap a tool's ``main``: user errors (``USER_ERRORS``, ``extra_errors``, a full disk) become
    one ``error: ...`` line on stderr and exit status 2, unless ``--debug`` is on the command line."""
    if main is None:
        return functools.partial(cli_main, extra_errors=extra_errors)
    caught = USER_ERRORS + tuple(extra_errors)

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = DEBUG_FLAG in sys.argv[1:]
        try:
            return main(*args, **kwargs)
        except Exception as e:
            disk_full = isinstance(e, OSError) and e.errno == errno.ENOSPC
            if debug or not (isinstance(e, caught) or disk_full):
                raise
            print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
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


def build_model_from_config(cfg: Mapping[str, Any], inference: bool = False) -> torch.nn.Module:
    """The config's model. ``inference``: of a distiller only the student is built (testing,
    benchmarking): no teacher, no teacher checkpoint, and a student that must not read LiDAR
    from a test pipeline that must not load it."""
    from mmdet3d.models.builder import DISTILLERS, build_model

    if "model" not in cfg:
        raise ConfigError("config has no 'model' section")
    model_cfg = cfg["model"]
    if inference and isinstance(model_cfg, Mapping) and model_cfg.get("type") in DISTILLERS:
        if "student" not in model_cfg:
            raise ConfigError(f"model: a {model_cfg['type']} config needs a 'student' model")
        from mmdet3d.models.distillers.bev_distiller import resolve_model_config

        student_cfg = resolve_model_config(model_cfg["student"], "model.student")
        student = _build("model.student", "model.student", student_cfg, build_model)
        if student.reads_points:
            raise ConfigError("model.student reads LiDAR (a LiDAR encoder or DepthLSSTransform): not a camera-only student")
        loads = [step.get("type") for step in cfg.get("data", {}).get("test", {}).get("pipeline", [])
                 if isinstance(step, Mapping) and "Points" in str(step.get("type", ""))]
        if loads:
            raise ConfigError(f"data.test.pipeline of a distillation config loads LiDAR ({loads}); the student is "
                              "camera-only, so its test pipeline must not read points")
        return student
    return _build("model", "model", model_cfg, build_model)


def build_dataset_from_config(cfg: Mapping[str, Any], split: str, inference: bool = False) -> Any:
    """The dataset ``data.<split>`` (``train``, ``val`` or ``test``).

    ``inference``: for testing a model on it. ``data.train`` is then read without a dataset
    wrapper (``dataset:`` of e.g. CBGSDataset), in test mode and with ``data.test``'s pipeline, so
    that no augmentation or resampling touches the samples being scored.
    """
    from mmdet3d.datasets.builder import build_dataset

    data = cfg.get("data")
    if not isinstance(data, Mapping) or split not in data or data[split] is None:
        raise ConfigError(f"config has no dataset at data.{split}")
    section = data[split]
    if inference and split == "train" and isinstance(section, Mapping):
        section = dict(section.get("dataset", section))
        section["test_mode"] = True
        test = data.get("test")
        if isinstance(test, Mapping) and "pipeline" in test:
            section["pipeline"] = test["pipeline"]
    return _build("dataset", f"data.{split}", section, build_dataset)


def configure_cpu_threads(local_world_size: int) -> int:
    """On CPU with several local processes, split the cores (unless OMP_NUM_THREADS is set)."""
    if local_world_size > 1 and not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // local_world_size)
        torch.set_num_threads(threads)
    return torch.get_num_threads()
