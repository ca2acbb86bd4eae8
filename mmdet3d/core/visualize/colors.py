"""Colours of the renders: one per detection class, and colour maps for heights, depths and heat.

The maps are piecewise-linear through a few anchor colours (no plotting library needed):
``rainbow`` (blue -> cyan -> green -> yellow -> red) for heights and depths, ``heat`` (black ->
purple -> orange -> pale yellow) for non-negative magnitudes such as BEV feature norms and masks.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CLASS_COLORS", "class_color", "colorize", "gradient_bar", "BACKGROUND", "GRID", "TEXT", "EGO"]

# nuScenes detection classes in devkit order, one distinct hue each: car orange, truck red,
# construction_vehicle brown, bus pink, trailer purple, barrier grey, motorcycle green, bicycle
# cyan, pedestrian blue, traffic_cone yellow
CLASS_COLORS = (
    (255, 158, 0), (230, 25, 75), (170, 110, 40), (245, 130, 200), (160, 60, 220),
    (170, 170, 170), (60, 180, 75), (70, 240, 240), (30, 120, 255), (255, 225, 25),
)
BACKGROUND = (18, 18, 24)
GRID = (60, 60, 72)
TEXT = (235, 235, 235)
EGO = (200, 200, 200)

_ANCHORS = {
    "rainbow": ((40, 60, 200), (0, 190, 230), (60, 210, 90), (240, 220, 40), (230, 50, 40)),
    "heat": ((0, 0, 4), (90, 20, 120), (200, 60, 80), (250, 150, 30), (252, 250, 180)),
}


def class_color(label: int) -> tuple[int, int, int]:
    """The colour of class ``label`` (an index in the config's ``object_classes``)."""
    return CLASS_COLORS[int(label) % len(CLASS_COLORS)]


def colorize(values: np.ndarray, lo: float, hi: float, name: str = "rainbow") -> np.ndarray:
    """(...,) values -> (..., 3) uint8 colours; ``lo`` maps to the first anchor, ``hi`` to the last
    (values outside are clipped; ``hi <= lo`` maps everything to the first)."""
    if name not in _ANCHORS:
        raise ValueError(f"colorize: unknown colour map {name!r} (have {sorted(_ANCHORS)})")
    anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    span = hi - lo if hi > lo else 1.0
    t = np.clip((np.asarray(values, dtype=np.float64) - lo) / span, 0.0, 1.0) * (len(anchors) - 1)
    i = np.minimum(np.floor(t).astype(np.int64), len(anchors) - 2)
    frac = (t - i)[..., None]
    return np.round(anchors[i] * (1 - frac) + anchors[i + 1] * frac).astype(np.uint8)


def gradient_bar(width: int, height: int, name: str = "rainbow") -> np.ndarray:
    """(height, width, 3) uint8 colour bar, low values on the left."""
    row = colorize(np.linspace(0.0, 1.0, width), 0.0, 1.0, name)
    return np.repeat(row[None], height, axis=0)

