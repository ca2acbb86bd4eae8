"""Process-group setup for the three ways the tools are launched, and small collective helpers.

Launch modes (detected from the environment, nothing to set by hand):

- ``torchpack dist-run -np N python tools/train.py ...``: OpenMPI's ``mpirun`` sets
  ``OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK`` and torchpack exports ``MASTER_HOST=host:port``.
  Ranks are read from those variables directly, so mpi4py is not needed.
- ``torchrun --nproc_per_node N tools/train.py ...``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` and ``MASTER_PORT``.
- plain ``python tools/train.py ...``: one process, no process group.

The backend is NCCL when CUDA is available and gloo otherwise. torchpack's own
``torchpack.distributed`` rank/size functions are kept in sync, so model code that calls
``torchpack.distributed.rank()`` sees the right values.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

__all__ = [
    "DistInfo",
    "DistributedSetupError",
    "detect_launcher",
    "init_distributed",
    "destroy_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "barrier",
    "all_gather_object",
    "broadcast_object",
    "all_reduce_mean",
    "all_reduce_flag",
    "broadcast_buffers",
]


class DistributedSetupError(RuntimeError):
    """The launch environment is incomplete or inconsistent; the message says which variable."""


@dataclass
class DistInfo:
    launcher: str  # "none" | "torchpack" | "torchrun"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_INFO = DistInfo(launcher="none")


def _env_int(name: str, default: int | None = None) -> int:
    """``int($name)``; ``default`` when the variable is unset and a default is given."""
    if default is not None and name not in os.environ:
        return default
    value = os.environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DistributedSetupError(f"environment variable {name}={value!r} is not an integer") from None


def detect_launcher() -> str:
    """``"torchpack"`` under mpirun, ``"torchrun"`` under torchrun, else ``"none"``."""
    if "OMPI_COMM_WORLD_RANK" in os.environ:
        return "torchpack"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return "torchrun"
    return "none"


def _sync_torchpack_context(info: DistInfo, local_size: int) -> None:
    try:
        from torchpack.distributed import context
    except ImportError:  # torchpack is a runtime requirement, but the helpers do not need it
        return
    context._world_size, context._world_rank = info.world_size, info.rank
    context._local_size, context._local_rank = local_size, info.local_rank


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Initialise the default process group if launched with several processes.

    Returns the rank/world-size/device of this process; with one process no group is created.
    Calling it twice returns the first result.
    """
    global _INFO
    if torch_dist.is_available() and torch_dist.is_initialized():
        return _INFO
    launcher = detect_launcher()
    if launcher == "torchpack":
        rank, world_size = _env_int("OMPI_COMM_WORLD_RANK"), _env_int("OMPI_COMM_WORLD_SIZE")
        local_rank, local_size = _env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0), _env_int("OMPI_COMM_WORLD_LOCAL_SIZE", world_size)
        master = os.environ.get("MASTER_HOST")
        if world_size > 1 and not master:
            raise DistributedSetupError(
                "launched by mpirun without MASTER_HOST=host:port; launch with "
                "'torchpack dist-run -np N python ...' (it sets MASTER_HOST), or export MASTER_HOST"
            )
        init_method = f"tcp://{master}"
    elif launcher == "torchrun":
        rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
        local_rank, local_size = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", world_size)
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if world_size > 1 and name not in os.environ:
                raise DistributedSetupError(f"RANK/WORLD_SIZE are set but {name} is not (launch with torchrun)")
        init_method = "env://"
    else:
        rank, world_size, local_rank, local_size, init_method = 0, 1, 0, 1, ""
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"rank {rank} is outside world size {world_size}")

    use_cuda = torch.cuda.is_available()
    if use_cuda:
        device_index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(device_index)
        device = torch.device("cuda", device_index)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if use_cuda else "gloo")

    info = DistInfo(
        launcher=launcher, rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_size, device=device
    )
    if world_size > 1:
        torch_dist.init_process_group(
            backend=backend,
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
        info.backend = backend
    _INFO = info
    _sync_torchpack_context(info, local_size)
    return info


def destroy_distributed() -> None:
    global _INFO
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
    _INFO = DistInfo(launcher="none")


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def get_rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return _INFO.local_rank if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (any picklable value), in rank order; ``[obj]`` with one process."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def _collective_device() -> torch.device:
    return _INFO.device if _INFO.backend == "nccl" else torch.device("cpu")


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of a dict of floats (same keys on every rank, in the same order)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    torch_dist.all_reduce(t)
    t /= get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_reduce_flag(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (so every rank takes the same branch)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last training step every
    rank holds its own running statistics; call this before evaluating or comparing ranks.
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        if buffer.dtype.is_floating_point or buffer.dtype in (torch.int64, torch.int32):
            torch_dist.broadcast(buffer.data, src=src)
