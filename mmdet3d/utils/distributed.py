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

Collectives time out after ``timeout_s`` (config key ``dist_timeout_s``; default 5 minutes on
CPU, 30 on CUDA). Inside ``timeout_guard`` a timed-out collective becomes a
``CollectiveTimeoutError`` that names the rank(s) that stopped responding: every rank that times
out says so in the process group's store, and the ranks silent after a short grace period are
the ones that hang. ``report_progress`` records where each rank was last.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as torch_dist

__all__ = [
    "DistInfo",
    "DistributedSetupError",
    "CollectiveTimeoutError",
    "DEFAULT_TIMEOUT_S",
    "timeout_guard",
    "report_progress",
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


class CollectiveTimeoutError(RuntimeError):
    """A collective operation timed out: another rank stopped responding; the message names it."""


DEFAULT_TIMEOUT_S = {"cpu": 300.0, "cuda": 1800.0}
_KEY = "mmdet3d/"


@dataclass
class DistInfo:
    launcher: str  # "none" | "torchpack" | "torchrun"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    timeout_s: float = DEFAULT_TIMEOUT_S["cpu"]

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


def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Initialise the default process group if launched with several processes.

    ``timeout_s``: how long a collective waits for the other ranks (None: ``DEFAULT_TIMEOUT_S``
    of the device). Returns the rank/world-size/device of this process; with one process no
    group is created. Calling it twice returns the first result.
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
    if timeout_s is None:
        timeout_s = DEFAULT_TIMEOUT_S["cuda" if use_cuda else "cpu"]
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or timeout_s <= 0:
        raise DistributedSetupError(f"dist_timeout_s must be a positive number of seconds, got {timeout_s!r}")

    info = DistInfo(
        launcher=launcher, rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_size, device=device,
        timeout_s=float(timeout_s),
    )
    if world_size > 1:
        torch_dist.init_process_group(
            backend=backend,
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=datetime.timedelta(seconds=float(timeout_s)),
        )
        info.backend = backend
    _INFO = info
    _sync_torchpack_context(info, local_size)
    return info


def destroy_distributed() -> None:
    """Tear down the process group (left alone after a timeout: its peers may never answer)."""
    global _INFO, _TIMED_OUT
    if torch_dist.is_available() and torch_dist.is_initialized() and not _TIMED_OUT:
        torch_dist.destroy_process_group()
    _INFO, _TIMED_OUT = DistInfo(launcher="none"), False


_TIMED_OUT = False


def _store():
    try:
        return torch_dist.distributed_c10d._get_default_store()
    except Exception:  # no group, or a torch without the private accessor
        return None


def report_progress(where: str) -> None:
    """Record in the store that this rank reached ``where`` (e.g. ``epoch 1, iteration 3``)."""
    store = _store() if is_distributed() else None
    if store is not None:
        store.set(f"{_KEY}progress/{get_rank()}", where)


def _read(store, key: str) -> str | None:
    try:
        return store.get(key).decode() if store.check([key]) else None
    except Exception:
        return None


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("timed out" in text or "timeout" in text)


def describe_timeout(grace_s: float) -> str:
    """Which ranks stopped responding: those that have not reported a timeout of their own
    within ``grace_s`` seconds of this rank's."""
    rank, world = get_rank(), get_world_size()
    head = f"rank {rank}: a collective operation timed out after {_INFO.timeout_s:g} s (dist_timeout_s)"
    store = _store()
    if store is None:
        return f"{head}; another rank stopped responding"
    store.set(f"{_KEY}timed_out/{rank}", "1")
    deadline = time.monotonic() + grace_s
    while True:
        silent = [r for r in range(world) if r != rank and _read(store, f"{_KEY}timed_out/{r}") is None]
        if not silent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not silent:
        return f"{head} on every rank; no rank answered the others"
    seen = [f"rank {r} (last at {_read(store, f'{_KEY}progress/{r}') or 'start-up'})" for r in silent]
    return f"{head}: stopped responding: {', '.join(seen)}"


@contextlib.contextmanager
def timeout_guard() -> Iterator[None]:
    """Turn a timed-out collective inside the block into a ``CollectiveTimeoutError`` naming the
    ranks that stopped responding."""
    global _TIMED_OUT
    try:
        yield
    except RuntimeError as e:
        if not is_distributed() or isinstance(e, CollectiveTimeoutError) or not _is_timeout(e):
            raise
        _TIMED_OUT = True
        raise CollectiveTimeoutError(describe_timeout(grace_s=min(30.0, max(2.0, _INFO.timeout_s / 2)))) from e


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
