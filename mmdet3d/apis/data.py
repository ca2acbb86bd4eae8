"""Data loading shared by the tools: samplers, seeding, epoch hooks and device transfer.

Every training process uses a ``DistributedSampler`` (with one replica in a single process), so
the order of epoch ``e`` is a permutation seeded with ``seed + e`` whatever the launch mode:
a resumed run sees exactly the data order of an uninterrupted one. Random state for
augmentation is re-seeded at each epoch start from ``(seed, epoch, rank)`` in the main process,
and each DataLoader worker gets ``base_seed + worker_id`` from a generator seeded the same way.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

__all__ = [
    "derive_seed",
    "seed_everything",
    "worker_init_fn",
    "resolve_collate",
    "build_train_loader",
    "build_test_loader",
    "build_test_loader_from_config",
    "start_epoch",
    "set_epoch_recursive",
    "to_device",
]


def derive_seed(seed: int, epoch: int = 0, rank: int = 0) -> int:
    """A 31-bit seed for (seed, epoch, rank); distinct ranks and epochs get distinct seeds."""
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(rank) * 101) % (2**31 - 1)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` of a DataLoader worker from its torch seed (base_seed + id)."""
    seed = torch.initial_seed() % (2**31 - 1)
    random.seed(seed)
    np.random.seed(seed)


def _unwrap_datasets(dataset: Any) -> Iterable[Any]:
    seen: set[int] = set()
    stack = [dataset]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        stack.append(getattr(obj, "dataset", None))
        stack.extend(getattr(obj, "datasets", None) or [])


def resolve_collate(dataset: Dataset) -> Callable:
    """The dataset's own ``collate_fn`` if it (or a dataset it wraps) has one, else the project's."""
    for obj in _unwrap_datasets(dataset):
        fn = getattr(obj, "collate_fn", None)
        if callable(fn):
            return fn
    try:
        from mmdet3d.datasets.pipelines import collate
    except ImportError as e:
        raise ImportError(f"mmdet3d.datasets.pipelines.collate is not available ({e})") from e
    return collate


def set_epoch_recursive(dataset: Any, epoch: int) -> int:
    """Give ``epoch`` to everything under ``dataset`` that has ``set_epoch``.

    An object with its own ``set_epoch`` (a dataset, a wrapper, a ``Compose``) is trusted to
    forward it and is not searched further; otherwise the search goes into wrapped datasets
    (``dataset``, ``datasets``) and the pipeline (``pipeline``, its ``transforms`` or a list).
    Returns how many ``set_epoch`` methods were called.
    """
    seen: set[int] = set()

    def visit(obj: Any) -> int:
        if obj is None or id(obj) in seen or isinstance(obj, (str, bytes, int, float)):
            return 0
        seen.add(id(obj))
        fn = getattr(obj, "set_epoch", None)
        if callable(fn):
            fn(epoch)
            return 1
        children: list[Any] = [getattr(obj, "dataset", None), getattr(obj, "pipeline", None), getattr(obj, "transforms", None)]
        children.extend(getattr(obj, "datasets", None) or [])
        if isinstance(obj, (list, tuple)):
            children.extend(obj)
        return sum(visit(child) for child in children)

    return visit(dataset)


def _build_loader(dataset: Dataset, sampler: Sampler, samples_per_gpu: int, workers_per_gpu: int, generator: torch.Generator | None = None) -> DataLoader:
    """The DataLoader settings shared by training and testing: collate, seeded workers, no dropped tail."""
    return DataLoader(
        dataset,
        batch_size=int(samples_per_gpu),
        sampler=sampler,
        num_workers=int(workers_per_gpu),
        collate_fn=resolve_collate(dataset),
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=worker_init_fn,
        generator=generator,
        drop_last=False,
    )


def build_train_loader(dataset: Dataset, samples_per_gpu: int, workers_per_gpu: int, rank: int, world_size: int, seed: int) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed))
    return _build_loader(dataset, sampler, samples_per_gpu, workers_per_gpu, generator=torch.Generator())


def build_test_loader(dataset: Dataset, samples_per_gpu: int, workers_per_gpu: int, rank: int, world_size: int) -> DataLoader:
    """In-order loader; with several ranks a padded ``DistributedSampler`` (see ``apis.test``)."""
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    else:
        sampler = SequentialSampler(dataset)
    return _build_loader(dataset, sampler, samples_per_gpu, workers_per_gpu)


def build_test_loader_from_config(dataset: Dataset, cfg: Mapping[str, Any], rank: int, world_size: int) -> DataLoader:
    """``build_test_loader`` with ``data.samples_per_gpu`` [1] and ``data.workers_per_gpu`` [0] read from ``cfg``."""
    data = cfg.get("data") or {}
    return build_test_loader(
        dataset,
        samples_per_gpu=int(data.get("samples_per_gpu", 1)),
        workers_per_gpu=int(data.get("workers_per_gpu", 0)),
        rank=rank,
        world_size=world_size,
    )


def start_epoch(loader: DataLoader, epoch: int, seed: int, rank: int) -> None:
    """Before iterating epoch ``epoch``: sampler order, worker seeds, main-process RNGs, set_epoch hooks."""
    epoch_seed = derive_seed(seed, epoch, rank)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed)
    seed_everything(epoch_seed)
    set_epoch_recursive(loader.dataset, epoch)


def to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts/lists/tuples to ``device``."""
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, dict):
        return {k: to_device(v, device) for k, v in data.items()}
    if isinstance(data, list):
        return [to_device(v, device) for v in data]
    if isinstance(data, tuple):
        return tuple(to_device(v, device) for v in data)
    return data
