"""``Compose``: a pipeline is a list of steps run in order on one results dict."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from mmdet3d.datasets.builder import PIPELINES

__all__ = ["Compose"]


class Compose:
    """Build each step from ``PIPELINES`` (a dict with ``type``) or take it as a callable.

    Calling runs the steps in order; a step that returns ``None`` drops the sample and the call
    returns ``None`` (the dataset then draws another index in training).
    """

    def __init__(self, transforms: Sequence[Mapping[str, Any] | Callable] | None):
        self.transforms: list[Callable] = []
        for i, step in enumerate(transforms or []):
            if isinstance(step, Mapping):
                step = PIPELINES.build(step)
            elif not callable(step):
                raise TypeError(f"pipeline step {i} must be a config dict with 'type' or a callable, got {type(step).__name__}: {step!r}")
            self.transforms.append(step)

    def __call__(self, results: dict) -> dict | None:
        for step in self.transforms:
            token = results.get("token", "?")
            try:
                results = step(results)
            except KeyError as e:
                if not (e.args and isinstance(e.args[0], str) and " " not in e.args[0]):
                    raise  # already a message, not a bare key
                # A step reading a key an earlier step should have written: name the step, the
                # sample and what the results held, rather than a bare KeyError.
                raise KeyError(
                    f"pipeline step {type(step).__name__} of sample {token}: missing key {e.args[0]!r} "
                    f"(results hold: {', '.join(sorted(results))}); check the order of the pipeline steps"
                ) from e
            if results is None:
                return None
        return results

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the steps that depend on it (``ObjectPaste(stop_epoch=...)``)."""
        for step in self.transforms:
            if hasattr(step, "set_epoch"):
                step.set_epoch(epoch)

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"
