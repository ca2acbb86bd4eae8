"""Object classes of the synthetic scenes: nuScenes size priors and box-part shapes.

Each object is an annotation box ``(l, w, h)`` (the nuScenes ``size`` is ``[w, l, h]``) filled
by a few coloured parts, so that every class has its own silhouette in the cameras (cab + cargo,
tapered cones, striped barriers, riders on cycles) and the LiDAR hits the same parts. Parts
are ``(cx, cy, cz, l, w, h)`` in the object frame (x forward, y left, z up from the ground) and
stay ``PART_MARGIN`` inside the annotation box, so no surface lies on the box boundary.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SIZE_PRIORS", "CATEGORY_OF", "PART_MARGIN", "sample_size", "make_parts"]

# Mean (l, w, h) in metres per detection class (nuScenes statistics).
SIZE_PRIORS: dict[str, tuple[float, float, float]] = {
    "car": (4.63, 1.97, 1.74),
    "truck": (6.94, 2.52, 2.84),
    "construction_vehicle": (6.37, 2.85, 3.19),
    "bus": (11.0, 2.94, 3.47),
    "trailer": (12.01, 2.90, 3.87),
    "barrier": (2.49, 0.50, 0.98),
    "motorcycle": (2.11, 0.77, 1.47),
    "bicycle": (1.70, 0.60, 1.28),
    "pedestrian": (0.73, 0.67, 1.77),
    "traffic_cone": (0.41, 0.41, 1.07),
}

CATEGORY_OF: dict[str, str] = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "construction_vehicle": "vehicle.construction",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "barrier": "movable_object.barrier",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
}

PART_MARGIN = 0.04  # metres between the outermost parts and the annotation box

# LiDAR reflectivity (0-255 scale) per material.
_PAINT, _GLASS, _TYRE, _SKIN, _CLOTH, _RETRO, _CONCRETE = 35.0, 12.0, 6.0, 20.0, 18.0, 160.0, 45.0

_CAR_PAINTS = np.array([[200, 200, 205], [30, 30, 35], [140, 140, 150], [170, 30, 30], [30, 60, 140],
                        [235, 235, 235], [90, 100, 90], [200, 170, 120]], dtype=np.float32)
_CLOTHES = np.array([[40, 60, 120], [150, 40, 40], [60, 120, 60], [220, 200, 60], [80, 80, 80],
                     [230, 230, 230], [120, 70, 150]], dtype=np.float32)
_SKIN_TONES = np.array([[230, 190, 160], [190, 140, 100], [120, 80, 55]], dtype=np.float32)


def sample_size(rng: np.random.Generator, label: str, jitter: float = 0.06) -> np.ndarray:
    """(3,) (l, w, h) drawn around the class prior, each dimension within +-``jitter`` relative."""
    base = np.asarray(SIZE_PRIORS[label])
    return base * (1.0 + rng.uniform(-jitter, jitter, size=3))


def _box(cx, cy, cz_bottom, l, w, h):
    return [cx, cy, cz_bottom + h / 2, l, w, h]


def _rider(rng, x, l, w, z0, h):
    """Torso and head of a rider seated at ``x`` from height ``z0`` to ``z0 + h``."""
    shirt, skin = _CLOTHES[rng.integers(len(_CLOTHES))], _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
    head = min(0.24, 0.3 * h)
    return ([_box(x, 0, z0, l, w, h - head), _box(x, 0, z0 + h - head, 0.22, min(w, 0.2), head)],
            [shirt, skin], [_CLOTH, _SKIN])


def make_parts(rng: np.random.Generator, label: str, size, with_rider: bool = False, worker: bool = False):
    """Parts of one object of class ``label`` with annotation size ``(l, w, h)``.

    Returns ``parts`` (P, 6) float64 ``(cx, cy, cz, l, w, h)`` in the object frame, ``colors``
    (P, 3) float32 RGB and ``intensity`` (P,) float32.
    """
    m = PART_MARGIN
    L, W, H = (float(v) - 2 * m for v in size)
    boxes, colors, refl = [], [], []

    def add(box, color, intensity):
        boxes.append(box)
        colors.append(np.asarray(color, dtype=np.float32))
        refl.append(intensity)

    if label == "car":
        paint = _CAR_PAINTS[rng.integers(len(_CAR_PAINTS))]
        add(_box(0, 0, 0, L, W, 0.55 * H), paint, _PAINT)
        add(_box(-0.06 * L, 0, 0.55 * H, 0.55 * L, W - 0.12, 0.45 * H), paint * 0.35 + np.array([20, 30, 50]), _GLASS)
    elif label == "truck":
        cab = np.array([[230, 230, 230], [40, 70, 160], [170, 40, 30], [240, 200, 50]])[rng.integers(4)]
        add(_box(0.38 * L, 0, 0, 0.24 * L, W, 0.82 * H), cab, _PAINT)
        add(_box(-0.13 * L, 0, 0, 0.74 * L, W, H), (150, 150, 145), _PAINT)
    elif label == "bus":
        body = np.array([[200, 30, 40], [240, 190, 40], [40, 140, 80], [235, 235, 235]])[rng.integers(4)]
        add(_box(0, 0, 0, L - 0.04, W - 0.04, H), body, _PAINT)
        add(_box(0, 0, 0.5 * H, L, W, 0.3 * H), (35, 45, 60), _GLASS)
    elif label == "trailer":
        container = np.array([[120, 80, 50], [60, 90, 140], [170, 170, 170], [150, 40, 30]])[rng.integers(4)]
        add(_box(0, 0, 0.3 * H, L, W, 0.7 * H), container, _PAINT)
        add(_box(-0.38 * L, 0, 0, 0.2 * L, W - 0.3, 0.3 * H), (25, 25, 25), _TYRE)
        add(_box(0.3 * L, 0, 0, 0.08 * L, 0.6 * W, 0.3 * H), (60, 60, 60), _PAINT)
    elif label == "construction_vehicle":
        yellow = np.array([235, 170, 20], dtype=np.float32)
        add(_box(0, 0, 0, L, W, 0.28 * H), (45, 45, 45), _TYRE)
        add(_box(-0.2 * L, 0, 0.28 * H, 0.6 * L, W, 0.37 * H), yellow, _PAINT)
        add(_box(-0.25 * L, 0.1 * W, 0.65 * H, 0.3 * L, 0.55 * W, 0.35 * H), yellow * 0.8, _PAINT)
        add(_box(0.3 * L, 0, 0.4 * H, 0.4 * L, 0.25 * W, 0.15 * H), (220, 120, 20), _PAINT)
    elif label == "pedestrian":
        shirt = np.array([240, 120, 20]) if worker else _CLOTHES[rng.integers(len(_CLOTHES))]
        trousers, skin = _CLOTHES[rng.integers(len(_CLOTHES))] * 0.5, _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
        add(_box(0, 0, 0, 0.5 * L, 0.6 * W, 0.47 * H), trousers, _CLOTH)
        add(_box(0, 0, 0.47 * H, 0.7 * L, W, 0.35 * H), shirt, _RETRO if worker else _CLOTH)
        add(_box(0, 0, 0.82 * H, 0.3 * L, 0.32 * W, 0.18 * H), skin, _SKIN)
    elif label in ("bicycle", "motorcycle"):
        wheel = min(0.66, 0.45 * L) if label == "bicycle" else min(0.62, 0.4 * H)
        frame = np.array([40, 150, 60]) if label == "bicycle" else np.array([20, 20, 25])
        tyre_w = 0.06 if label == "bicycle" else 0.16
        add(_box(L / 2 - wheel / 2, 0, 0, wheel, tyre_w, wheel), (20, 20, 20), _TYRE)
        add(_box(-L / 2 + wheel / 2, 0, 0, wheel, tyre_w, wheel), (20, 20, 20), _TYRE)
        body_w = 0.1 if label == "bicycle" else 0.55 * W
        body_h = 0.2 * H if with_rider else 0.3 * H
        add(_box(0, 0, wheel * 0.55, L - wheel, body_w, body_h), frame if label == "bicycle" else (160, 20, 20), _PAINT)
        if with_rider:
            z0 = wheel * 0.55 + body_h
            parts, cols, ints = _rider(rng, -0.1 * L, 0.35, min(W, 0.45), z0, H - z0)
            for p, c, i in zip(parts, cols, ints):
                add(p, c, i)
    elif label == "traffic_cone":
        add(_box(0, 0, 0, L, W, 0.06 * H), (20, 20, 20), _TYRE)
        add(_box(0, 0, 0.06 * H, 0.72 * L, 0.72 * W, 0.34 * H), (250, 100, 10), _RETRO)
        add(_box(0, 0, 0.4 * H, 0.5 * L, 0.5 * W, 0.3 * H), (245, 245, 245), _RETRO)
        add(_box(0, 0, 0.7 * H, 0.3 * L, 0.3 * W, 0.3 * H), (250, 100, 10), _RETRO)
    elif label == "barrier":
        segments = 4
        for k in range(segments):
            cx = -L / 2 + (k + 0.5) * L / segments
            add(_box(cx, 0, 0, L / segments, W, 0.55 * H), (220, 30, 30) if k % 2 else (240, 240, 240), _RETRO)
        add(_box(0, 0, 0.55 * H, L, 0.6 * W, 0.45 * H), (225, 225, 215), _CONCRETE)
    else:
        raise KeyError(f"no shape for class {label!r}; known classes: {sorted(SIZE_PRIORS)}")
    parts = np.asarray(boxes, dtype=np.float64)
    return parts, np.clip(np.stack(colors), 0, 255).astype(np.float32), np.asarray(refl, dtype=np.float32)
