"""The real nuScenes keyframe (mmdet3d 1.x infos) in ``shared/data`` beside the checkout, and a skip marker."""
from __future__ import annotations

from pathlib import Path

import pytest

KEYFRAME = Path(__file__).resolve().parents[2] / "shared/data/nuscenes_keyframe"
PKL = KEYFRAME / "n015-2018-07-24-11-22-45+0800.pkl"
needs_keyframe = pytest.mark.skipif(not PKL.is_file(), reason=f"real nuScenes keyframe not found at {KEYFRAME}")


def keyframe_batch(cfg: dict, keyframe: Path = KEYFRAME, batch_size: int = 1, test_mode: bool = True) -> dict | None:
    """The keyframe through ``cfg``'s test pipeline, repeated ``batch_size`` times and collated;
    None when ``keyframe`` holds no info pkl."""
    pkls = sorted(Path(keyframe).glob("*.pkl")) if Path(keyframe).is_dir() else []
    if not pkls:
        return None
    from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset
    from mmdet3d.datasets.pipelines.formatting import collate

    dataset = NuScenesDataset(str(keyframe), pkls[0].name, pipeline=cfg["test_pipeline"],
                              object_classes=cfg["object_classes"], test_mode=test_mode)
    return collate([dataset[0]] * batch_size)
