"""The real nuScenes keyframe (mmdet3d 1.x infos) in ``shared/data`` beside the checkout, and a skip marker."""
from __future__ import annotations

from pathlib import Path

import pytest

KEYFRAME = Path(__file__).resolve().parents[2] / "shared/data/nuscenes_keyframe"
PKL = KEYFRAME / "n015-2018-07-24-11-22-45+0800.pkl"
needs_keyframe = pytest.mark.skipif(not PKL.is_file(), reason=f"real nuScenes keyframe not found at {KEYFRAME}")
