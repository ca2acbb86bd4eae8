"""Readable logs for the tools: a text log, JSON lines and TensorBoard scalars, written on rank 0.

``get_logger`` gives the ``mmdet3d`` logger: ``INFO`` on rank 0 (console and optional file),
``WARNING`` and above only on the other ranks. ``RunLogger`` bundles the three per-run sinks
of ``tools/train.py``: ``run_dir/log.txt`` (through the logger), ``run_dir/log.jsonl`` (one JSON
object per logged step or evaluation) and ``run_dir/tensorboard/`` (SummaryWriter scalars, and
images such as the BEV render at each evaluation).
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping

__all__ = ["get_logger", "RunLogger", "format_metrics_table", "format_detection_metrics", "format_seconds"]

_LOGGER_NAME = "mmdet3d"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


class _TqdmSafeHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so log lines do not break an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def get_logger(log_file: str | None = None, rank: int = 0, name: str = _LOGGER_NAME) -> logging.Logger:
    """The project logger; handlers are replaced on each call (one console, at most one file)."""
    logger = logging.getLogger(name)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    level = logging.INFO if rank == 0 else logging.WARNING
    logger.setLevel(level)
    formatter = logging.Formatter(_FORMAT if rank == 0 else f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", _DATEFMT)
    console = _TqdmSafeHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if log_file is not None and rank == 0:
        file_handler = logging.FileHandler(log_file, mode="a")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def format_metrics_table(metrics: Mapping[str, Any], title: str = "metric") -> str:
    """A two-column text table of scalar metrics (non-scalars are skipped)."""
    rows = [(k, _fmt(v)) for k, v in metrics.items() if isinstance(v, (int, float, str))]
    if not rows:
        return "(no metrics)"
    width = max(len(title), *(len(k) for k, _ in rows))
    vwidth = max(5, *(len(v) for _, v in rows))
    line = f"+-{'-' * width}-+-{'-' * vwidth}-+"
    out = [line, f"| {title:<{width}} | {'value':>{vwidth}} |", line]
    out += [f"| {k:<{width}} | {v:>{vwidth}} |" for k, v in rows]
    out.append(line)
    return "\n".join(out)


_TP_COLUMNS = [("AP", "ap"), ("ATE", "trans_err"), ("ASE", "scale_err"), ("AOE", "orient_err"), ("AVE", "vel_err"), ("AAE", "attr_err")]


def format_detection_metrics(metrics: Mapping[str, Any]) -> str:
    """Headline metrics (keys without '/') and, when present, a per-class table of AP and TP errors.

    Per-class keys follow ``<prefix>/<class>_ap``, ``<prefix>/<class>_trans_err``, ... (BEVFusion's
    names); other keys with '/' are left to the JSON log.
    """
    headline = {k: v for k, v in metrics.items() if "/" not in k}
    classes: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        if "/" not in key:
            continue
        name = key.split("/", 1)[1]
        for column, suffix in _TP_COLUMNS:
            if name.endswith("_" + suffix):
                classes.setdefault(name[: -len(suffix) - 1], {})[column] = value
    classes = {c: v for c, v in classes.items() if "AP" in v}
    parts = [format_metrics_table(headline or metrics)]
    if classes:
        width = max(5, *(len(c) for c in classes))
        header = f"| {'class':<{width}} | " + " | ".join(f"{col:>7}" for col, _ in _TP_COLUMNS) + " |"
        line = "+-" + "-" * width + "-+" + "+".join("-" * 9 for _ in _TP_COLUMNS) + "+"
        rows = [line, header, line]
        for cls, values in classes.items():
            cells = [_fmt(values[col]) if col in values else "" for col, _ in _TP_COLUMNS]
            rows.append(f"| {cls:<{width}} | " + " | ".join(f"{c:>7}" for c in cells) + " |")
        rows.append(line)
        parts.append("\n".join(rows))
    return "\n".join(parts)


class RunLogger:
    """Text log + JSON lines + TensorBoard for one training run (only rank 0 writes)."""

    def __init__(self, run_dir: str, rank: int = 0, tensorboard: bool = True):
        self.run_dir = run_dir
        self.rank = rank
        self.logger = get_logger(os.path.join(run_dir, "log.txt") if rank == 0 else None, rank=rank)
        self._json = open(os.path.join(run_dir, "log.jsonl"), "a") if rank == 0 else None
        self._tb = None
        if rank == 0 and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))

    def info(self, message: str) -> None:
        self.logger.info(message)

    def warning(self, message: str) -> None:
        self.logger.warning(message)

    def log_scalars(self, mode: str, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """One JSON line ``{"mode", "epoch", "iter", **values}`` and TensorBoard ``mode/key``."""
        if self.rank != 0:
            return
        record = {"mode": mode, "epoch": epoch, "iter": step, "time": round(time.time(), 3)}
        # strict JSON: nan/inf (e.g. a TP error of a class without predictions) become null
        record.update({k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items() if isinstance(v, (int, float))})
        self._json.write(json.dumps(record) + "\n")
        self._json.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(float(value)):
                    self._tb.add_scalar(f"{mode}/{key}", float(value), step)
            self._tb.flush()

    def log_image(self, tag: str, image, step: int) -> None:
        """An (H, W, 3) uint8 image to TensorBoard as ``tag`` (rank 0, with TensorBoard on)."""
        if self.rank != 0 or self._tb is None:
            return
        self._tb.add_image(tag, image, step, dataformats="HWC")
        self._tb.flush()

    def close(self) -> None:
        if self._json is not None:
            self._json.close()
            self._json = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for handler in list(self.logger.handlers):
            if isinstance(handler, logging.FileHandler):
                self.logger.removeHandler(handler)
                handler.close()
