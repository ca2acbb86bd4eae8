"""Inference over a dataset on one or many processes, results gathered in dataset order.

Each rank runs the (unwrapped) model in eval mode over its share of a non-shuffled loader.
The indices a rank sees are read from its sampler, so every prediction is paired with its
dataset index; rank 0 (and every rank, see ``collect_results``) then rebuilds the list in
dataset order, dropping the duplicates a padded ``DistributedSampler`` adds and checking that
no sample is missing.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmdet3d.utils.checkpoint import unwrap_model
from mmdet3d.apis.data import to_device
from mmdet3d.utils import distributed as dist

__all__ = ["single_process_inference", "collect_results", "inference", "outputs_to_cpu"]


def outputs_to_cpu(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        return data.detach().cpu()
    if isinstance(data, dict):
        return {k: outputs_to_cpu(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(outputs_to_cpu(v) for v in data)
    return data


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, dict):
        if isinstance(batch.get("metas"), list):
            return len(batch["metas"])
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
            if isinstance(v, list):
                return len(v)
    return None


@torch.no_grad()
def single_process_inference(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "test", show_progress: bool = True) -> list[tuple[int, Any]]:
    """``(dataset_index, prediction)`` for every sample this process's sampler yields, in order.

    Each prediction dict gets the sample's ``token`` from the batch ``metas`` (when they hold one),
    so saved predictions can be matched to their samples.
    """
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    indices = list(iter(loader.sampler))
    pairs: list[tuple[int, Any]] = []
    position = 0
    bar = tqdm(total=len(indices), desc=desc, unit="sample", disable=not show_progress, dynamic_ncols=True)
    try:
        for batch in loader:
            outputs = model(to_device(batch, device))
            if not isinstance(outputs, (list, tuple)):
                raise TypeError(f"model in eval mode must return a list of per-sample dicts, got {type(outputs).__name__}")
            expected = _batch_size(batch)
            if expected is not None and len(outputs) != expected:
                raise ValueError(f"model returned {len(outputs)} predictions for a batch of {expected} samples")
            metas = batch.get("metas") if isinstance(batch, dict) else None
            for k, out in enumerate(outputs):
                out = outputs_to_cpu(out)
                if isinstance(out, dict) and isinstance(metas, list) and isinstance(metas[k], Mapping) and "token" in metas[k]:
                    out.setdefault("token", metas[k]["token"])
                pairs.append((indices[position], out))
                position += 1
            dist.report_progress(f"{desc}, {position} of {len(indices)} samples")
            bar.update(len(outputs))
    finally:
        bar.close()
        model.train(was_training)
    if position != len(indices):
        raise ValueError(f"the loader yielded {position} samples but its sampler listed {len(indices)}")
    return pairs


def collect_results(pairs: Sequence[tuple[int, Any]], dataset_size: int) -> list[Any]:
    """All ranks' ``(index, prediction)`` pairs -> one list in dataset order (returned on every rank)."""
    gathered = dist.all_gather_object(list(pairs))
    by_index: dict[int, Any] = {}
    for rank_pairs in gathered:
        for index, prediction in rank_pairs:
            by_index.setdefault(int(index), prediction)  # padding repeats an index: keep the first
    missing = [i for i in range(dataset_size) if i not in by_index]
    if missing:
        raise RuntimeError(f"predictions missing for {len(missing)} of {dataset_size} samples (first: {missing[:5]})")
    extra = sorted(set(by_index) - set(range(dataset_size)))
    if extra:
        raise RuntimeError(f"predictions for indices outside the dataset: {extra[:5]}")
    return [by_index[i] for i in range(dataset_size)]


def inference(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "test") -> list[Any]:
    """Predictions for the whole ``loader.dataset`` in dataset order, on every rank."""
    pairs = single_process_inference(model, loader, device, desc=desc, show_progress=dist.is_main_process())
    return collect_results(pairs, len(loader.dataset))
