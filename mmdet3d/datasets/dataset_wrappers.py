"""``CBGSDataset``: class-balanced grouping and sampling (Zhu et al., CBGS) over a detection dataset."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from torch.utils.data import Dataset

from mmdet3d.datasets.builder import DATASETS, build_dataset

__all__ = ["CBGSDataset", "dataset_cat_ids"]


def dataset_cat_ids(dataset, index: int) -> list[int]:
    """Class ids present in sample ``index``: ``dataset.get_cat_ids`` if it has one, otherwise from
    its infos (``data_infos[index]['gt_names']``, boxes kept by ``valid_flag`` when the dataset
    uses it, else by ``num_lidar_pts > 0``)."""
    if hasattr(dataset, "get_cat_ids"):
        return sorted(set(int(c) for c in dataset.get_cat_ids(index)))
    info = dataset.data_infos[index]
    names = np.asarray(info.get("gt_names", []))
    if getattr(dataset, "use_valid_flag", False) and "valid_flag" in info:
        names = names[np.asarray(info["valid_flag"], dtype=bool)]
    elif "num_lidar_pts" in info:
        names = names[np.asarray(info["num_lidar_pts"]) > 0]
    classes = list(dataset.object_classes)
    return sorted({classes.index(n) for n in names if n in classes})


@DATASETS.register_module()
class CBGSDataset(Dataset):
    """Resample ``dataset`` so that every class appears in about the same number of samples.

    For class ``c`` with sample list ``S_c`` (samples holding at least one ``c`` box) and share
    ``f_c = |S_c| / sum_k |S_k|``, draw ``|S_c| / (K * f_c) = sum_k |S_k| // K`` indices from
    ``S_c`` with replacement (``K`` classes that occur), as mmdet3d's CBGS: every class
    contributes the same number of entries. Absent classes are skipped. ``seed`` fixes the draw.

    Args:
        dataset: a dataset instance or its config dict.
        seed: seed of the resampling draw.
    """

    def __init__(self, dataset: Dataset | Mapping[str, Any], seed: int = 0):
        self.dataset = build_dataset(dataset) if isinstance(dataset, Mapping) else dataset
        self.object_classes = tuple(self.dataset.object_classes)
        self.seed = seed
        self.sample_indices = self._get_sample_indices()

    def _get_sample_indices(self) -> np.ndarray:
        class_sample_idxs: list[list[int]] = [[] for _ in self.object_classes]
        for idx in range(len(self.dataset)):
            for cat_id in dataset_cat_ids(self.dataset, idx):
                class_sample_idxs[cat_id].append(idx)
        present = [idxs for idxs in class_sample_idxs if idxs]
        if not present:
            raise ValueError(f"CBGSDataset: no sample of the wrapped dataset holds any of the classes {self.object_classes}")
        # |S_c| / (K f_c) = sum_k |S_k| / K for every class: integer division avoids float floor errors.
        per_class = sum(len(idxs) for idxs in present) // len(present)
        rng = np.random.default_rng(self.seed)
        return np.concatenate([rng.choice(idxs, per_class) for idxs in present]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.sample_indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.sample_indices[index])]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getattr__(self, name: str):
        # Anything not defined here (evaluate, data_infos, ...) comes from the wrapped dataset.
        if name == "dataset":  # not yet set (e.g. while unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)
