"""A small synthetic nuScenes dataset with infos, generated once per test session.

Shared by tests/test_nuscenes_infos.py and tests/test_nuscenes_dataset.py: two scenes (one
mini_train, one mini_val), a few keyframes, 320x180 images.
"""
from __future__ import annotations

import pytest

KEYFRAMES_PER_SCENE = 4
MAX_SWEEPS = 3
# The generator guarantees every scene all ten classes with LiDAR points within the devkit's
# class ranges, so feeding the val GT back scores mAP = 1 with any seed.
SEED = 0
_CACHE: dict[str, dict] = {}


def synthetic_nuscenes(tmp_path_factory) -> dict:
    """-> ``{"root", "version", "infos": create_nuscenes_infos result}``; skips if no generator."""
    if "data" in _CACHE:
        return _CACHE["data"]
    try:
        from mmdet3d.datasets.synthetic import generate_dataset
    except ImportError as e:
        pytest.skip(f"synthetic nuScenes generator not available yet: {e}")
    from mmdet3d.datasets.nuscenes_converter import create_nuscenes_infos

    root = tmp_path_factory.mktemp("synthetic_nuscenes")
    # One process: a spawn pool costs more than it saves for two small scenes on a shared machine.
    generate_dataset(str(root), version="v1.0-mini", num_scenes=2, keyframes_per_scene=KEYFRAMES_PER_SCENE,
                     image_size=(320, 180), seed=SEED, progress=False, workers=1)
    infos = create_nuscenes_infos(str(root), "v1.0-mini", out_dir=str(root), max_sweeps=MAX_SWEEPS)
    _CACHE["data"] = {"root": str(root), "version": "v1.0-mini", "infos": infos}
    return _CACHE["data"]
