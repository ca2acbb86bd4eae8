"""Data loading shared by the tools: samplers, seeding, epoch hooks and device transfer.

Every training process uses a ``DistributedSampler`` (with one replica in a single process), so
the order of epoch ``e`` is a permutation seeded with ``seed + e`` whatever the launch mode:
a resumed run sees exactly the data order of an uninterrupted one.

Augmentation is seeded per sample: the training dataset is wrapped in ``SeededSamples``, which
seeds ``random``, ``numpy.random`` and torch's global generator from ``(seed, epoch, index)``
before loading sample ``index`` (and restores them after). A sample therefore gets the same
augmentation whichever process loads it: the same with 0 or N loader workers, with any number
of ranks, and after a resume. (Per-worker streams, seeded ``base_seed + worker_id``, gave each
sample the draws of whichever worker happened to load it, so the weights depended on the
worker count.) The main process's generators are re-seeded at each epoch start from
``(seed, epoch, rank)``; loading never advances them.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

__all__ = [
    "derive_seed",
    "sample_seed",
    "seed_everything",
    "seeded_global_rngs",
    "SeededSamples",
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


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 31-bit seed for sample ``index`` of epoch ``epoch``: independent of rank and worker."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0]) % (2**31 - 1)


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


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed ``random``, ``numpy.random`` and torch's CPU generator with ``seed`` inside the block;
    restore their previous states on exit."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU only: the CUDA generators stay the model's
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededSamples(Dataset):
    """``dataset[index]`` loaded under ``seeded_global_rngs(sample_seed(seed, epoch, index))``.

    Pipeline steps draw from the global generators (``np.random`` as mmdetection3d's do); this
    wrapper makes those draws a function of the sample and the epoch alone. ``set_epoch`` is
    called by ``start_epoch`` before the loader's workers are started (they copy the wrapper
    with its epoch; persistent workers would keep a stale epoch, so the loaders do not use them).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        set_epoch_recursive(self.dataset, epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with seeded_global_rngs(sample_seed(self.seed, self.epoch, index)):
            return self.dataset[index]


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
    """Shuffled ``DistributedSampler`` order and per-sample augmentation seeds (``SeededSamples``)."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed))
    return _build_loader(SeededSamples(dataset, seed), sampler, samples_per_gpu, workers_per_gpu, generator=torch.Generator())


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
    """Before iterating epoch ``epoch``: sampler order, worker seeds, main-process RNGs, set_epoch hooks
    (the per-sample augmentation seeds of ``SeededSamples`` among them)."""
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
