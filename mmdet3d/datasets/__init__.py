"""Datasets and data pipelines; importing this package registers them."""
from . import pipelines
from .builder import DATASETS, PIPELINES, build_dataset
from .dataset_wrappers import CBGSDataset
from .nuscenes_dataset import NuScenesDataset

__all__ = ["DATASETS", "PIPELINES", "build_dataset", "CBGSDataset", "NuScenesDataset"]
