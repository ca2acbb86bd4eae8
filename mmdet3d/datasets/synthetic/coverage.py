"""Class coverage: every scene shows all ten detection classes to the ego, in every keyframe.

The devkit's ``DetectionEval`` scores a class without ground truth in the evaluated split as
AP 0, so a scene missing one class caps the mAP of a perfect detector at 0.9. ``scene.py``
therefore places anchors of every class near the ego's route (``chain_positions``), and
``writer.build_world`` checks the result with the keyframes' LiDAR sweeps (``class_coverage``).
Ranges are the devkit's ``detection_cvpr_2019`` class ranges: the xy distance between the box
centre and the ego pose.
"""
from __future__ import annotations

import numpy as np

from ..nuscenes_utils import NUSCENES_CLASSES

__all__ = ["DETECTION_CLASSES", "CLASS_RANGE", "RANGE_MARGIN", "MIN_POINTS", "half_window", "chain_positions",
           "objects_in_range", "class_coverage"]

DETECTION_CLASSES = NUSCENES_CLASSES  # devkit order
CLASS_RANGE = {"car": 50.0, "truck": 50.0, "bus": 50.0, "trailer": 50.0, "construction_vehicle": 50.0,
               "pedestrian": 40.0, "motorcycle": 40.0, "bicycle": 40.0, "traffic_cone": 30.0, "barrier": 30.0}
RANGE_MARGIN = 0.85  # anchors stay within this fraction of their class range
MIN_POINTS = 5  # LiDAR points on an object for it to count as seen


def half_window(label: str, lateral: float) -> float:
    """Longitudinal half-extent (m) within which an object ``lateral`` metres to the side of the
    ego stays within ``RANGE_MARGIN`` of its class range."""
    reach = RANGE_MARGIN * CLASS_RANGE[label]
    return float(np.sqrt(reach ** 2 - lateral ** 2))


def chain_positions(lo: float, hi: float, half: float) -> np.ndarray:
    """Evenly spaced positions such that every point of ``[lo, hi]`` lies within ``0.8 * half``
    of one of them (the remaining ``0.2 * half`` absorbs the object's placement)."""
    count = max(1, int(np.ceil((hi - lo) / (1.6 * half))))
    return lo + (np.arange(count) + 0.5) * (hi - lo) / count


def objects_in_range(layout, t: float) -> np.ndarray:
    """(N,) bool: object within its class range of the ego at time ``t``."""
    x, y, _, _, _ = layout.motion.state(t)
    ex, ey, _ = layout.ego_pose(t)
    limit = np.array([CLASS_RANGE[label] for label in layout.labels])
    return np.hypot(x - ex, y - ey) < limit


def class_coverage(layout, times, point_counts=None, min_points: int = MIN_POINTS) -> np.ndarray:
    """(T, 10) bool: some object of each class of ``DETECTION_CLASSES`` is within its class
    range at each time of ``times``, and (given ``point_counts``, a (T, N) array of LiDAR points
    per object) carries at least ``min_points`` points."""
    labels = np.asarray(layout.labels)
    out = np.zeros((len(times), len(DETECTION_CLASSES)), dtype=bool)
    for k, t in enumerate(times):
        seen = objects_in_range(layout, t)
        if point_counts is not None:
            seen &= np.asarray(point_counts[k]) >= min_points
        out[k] = [bool(np.any(seen & (labels == c))) for c in DETECTION_CLASSES]
    return out
