"""Embedded synthetic dataset: procedurally generated street scenes in the nuScenes v1.0 format."""
from .generate import GENERATOR_VERSION, SUPPORTED_VERSIONS, DatasetWriteError, generate_dataset, select_scenes

__all__ = ["generate_dataset", "select_scenes", "SUPPORTED_VERSIONS", "DatasetWriteError", "GENERATOR_VERSION"]
