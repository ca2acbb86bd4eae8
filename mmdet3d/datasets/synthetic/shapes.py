"""Object classes of the synthetic scenes: nuScenes size priors and box-part shapes.

Each object is an annotation box ``(l, w, h)`` (the nuScenes ``size`` is ``[w, l, h]``) filled
by a few coloured parts, so that every class has its own silhouette in the cameras (cab + cargo,
tapered cones, striped barriers, riders on cycles) and the LiDAR hits the same parts. Parts
are ``(cx, cy, cz, l, w, h)`` in the object frame (x forward, y left, z up from the ground) and
stay ``PART_MARGIN`` inside the annotation box, so no surface lies on the box boundary.

Every class that has a heading in the devkit has the front/back cues of its real counterpart,
in geometry (seen by the LiDAR and the cameras alike) and in colour and reflectivity: a car's
bonnet is lower than its boot and its cabin sits behind the centre; trucks and buses have a
front cab or windscreen and a rear roof unit; cycles have handlebars at the front and a rider
facing forward; a pedestrian has feet and a face on the front and a back that differs; front
lights are bright and retro-reflective, rear lights red. Barriers and cones stay symmetric (the
devkit scores their orientation modulo pi and not at all).
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
_TAIL_REFL = 90.0  # red rear lamps: reflective, but less than the front lamps' retro-reflectors

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


_HEADLIGHT, _TAILLIGHT, _WINDSCREEN = (250, 245, 215), (190, 15, 20), (25, 35, 55)
_LIGHT_DEPTH = 0.05  # metres: lamps are slabs this thick at the front and rear faces


def _lights(add, L, W, z0, h, width=0.18, front=True, rear=True):
    """Head lamps (bright, retro-reflective) and red tail lamps on the front/rear faces."""
    for y in (-(W / 2 - width * W / 2), W / 2 - width * W / 2):
        if front:
            add(_box(L / 2 - _LIGHT_DEPTH / 2, y, z0, _LIGHT_DEPTH, width * W, h), _HEADLIGHT, _RETRO)
        if rear:
            add(_box(-L / 2 + _LIGHT_DEPTH / 2, y, z0, _LIGHT_DEPTH, width * W, h), _TAILLIGHT, _TAIL_REFL)


def _rider(add, rng, x, l, w, z0, h, reach):
    """A rider seated at ``x`` from height ``z0`` to ``z0 + h``, facing +x, arms ``reach`` forward."""
    shirt, skin = _CLOTHES[rng.integers(len(_CLOTHES))], _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
    head = min(0.24, 0.3 * h)
    torso = h - head
    add(_box(x, 0, z0, l, w, torso), shirt, _CLOTH)
    # Arms forward to the handlebars, at shoulder height: the rider's front.
    add(_box(x + l / 2 + reach / 2, 0, z0 + 0.55 * torso, reach, 0.8 * w, 0.12), shirt, _CLOTH)
    # Head ahead of the torso's centre, face forward, hair behind.
    add(_box(x + 0.04, 0, z0 + torso, 0.2, min(w, 0.2), head), skin, _SKIN)
    add(_box(x - 0.1, 0, z0 + torso + 0.3 * head, 0.06, min(w, 0.2), 0.7 * head), (30, 25, 20), _CLOTH)


def _car(add, rng, L, W, H):
    paint = _CAR_PAINTS[rng.integers(len(_CAR_PAINTS))]
    glass = paint * 0.3 + np.array([15, 25, 45])
    d = _LIGHT_DEPTH
    add(_box(0, 0, 0.1 * H, L - 2 * d, W, 0.32 * H), paint, _PAINT)                       # sills, bumpers
    add(_box(0.32 * L - d / 2, 0, 0.42 * H, 0.36 * L - d, W, 0.04 * H), paint, _PAINT)     # low bonnet
    add(_box(-0.38 * L + d / 2, 0, 0.42 * H, 0.24 * L - d, W, 0.14 * H), paint, _PAINT)    # high boot
    add(_box(-0.1 * L, 0, 0.42 * H, 0.48 * L, W - 0.1, 0.5 * H), glass, _GLASS)            # cabin, behind centre
    add(_box(-0.14 * L, 0, 0.92 * H, 0.36 * L, W - 0.14, 0.08 * H), paint, _PAINT)         # roof
    for x in (0.32 * L, -0.32 * L):
        add(_box(x, 0, 0, 0.17 * L, W, 0.1 * H), (20, 20, 20), _TYRE)
    _lights(add, L, W, 0.28 * H, 0.12 * H)


def _truck(add, rng, L, W, H):
    cab = np.array([[230, 230, 230], [40, 70, 160], [170, 40, 30], [240, 200, 50]])[rng.integers(4)]
    d = _LIGHT_DEPTH
    add(_box(0.38 * L - d / 2, 0, 0.12 * H, 0.24 * L - d, W, 0.7 * H), cab, _PAINT)          # cab, lower than the box
    add(_box(0.5 * L - d / 2, 0, 0.45 * H, d, 0.9 * W, 0.3 * H), _WINDSCREEN, _GLASS)
    add(_box(0.38 * L, 0, 0, 0.12 * L, W - 0.2, 0.14 * H), (25, 25, 25), _TYRE)             # front axle
    # Cargo box on a high floor, rear axles set in from the back: open space under the rear.
    add(_box(-0.13 * L + d / 2, 0, 0.32 * H, 0.74 * L - d, W, 0.68 * H), (150, 150, 145), _PAINT)
    add(_box(-0.2 * L, 0, 0, 0.24 * L, W - 0.2, 0.32 * H), (25, 25, 25), _TYRE)
    _lights(add, L, W, 0.2 * H, 0.08 * H, rear=False)
    _lights(add, L, W, 0.34 * H, 0.06 * H, front=False)


def _bus(add, rng, L, W, H):
    body = np.array([[200, 30, 40], [240, 190, 40], [40, 140, 80], [235, 235, 235]])[rng.integers(4)]
    d = _LIGHT_DEPTH
    add(_box(0, 0, 0.1 * H, L - 2 * d, W - 0.04, 0.66 * H), body, _PAINT)
    add(_box(0.15 - d / 2, 0, 0.42 * H, L - d - 0.3, W, 0.28 * H), (35, 45, 60), _GLASS)    # side windows, painted rear
    add(_box(0.5 * L - d / 2, 0, 0.22 * H, d, 0.92 * W, 0.52 * H), _WINDSCREEN, _GLASS)     # tall windscreen
    # Engine and air conditioning at the back: the rear half is taller than the front.
    add(_box(-0.27 * L - d / 2, 0, 0.76 * H, 0.46 * L - d, 0.85 * W, 0.24 * H), (170, 170, 170), _PAINT)
    # Short front overhang, long rear one: axles off-centre.
    for x in (0.28 * L, -0.2 * L):
        add(_box(x, 0, 0, 0.09 * L, W - 0.1, 0.1 * H), (20, 20, 20), _TYRE)
    _lights(add, L, W, 0.12 * H, 0.06 * H)


def _trailer(add, rng, L, W, H):
    container = np.array([[120, 80, 50], [60, 90, 140], [170, 170, 170], [150, 40, 30]])[rng.integers(4)]
    d, nose = _LIGHT_DEPTH, 0.1 * L
    add(_box(-nose / 2 - d / 2, 0, 0.3 * H, L - nose - d, W, 0.7 * H), container, _PAINT)
    add(_box(L / 2 - nose / 2, 0, 0.55 * H, nose, 0.8 * W, 0.35 * H), (200, 200, 205), _PAINT)  # front cooling unit
    add(_box(-0.36 * L, 0, 0, 0.22 * L, W - 0.3, 0.3 * H), (25, 25, 25), _TYRE)
    add(_box(0.25 * L, 0, 0, 0.08 * L, 0.6 * W, 0.3 * H), (60, 60, 60), _PAINT)             # landing gear
    _lights(add, L, W, 0.3 * H, 0.06 * H, front=False)


def _construction_vehicle(add, rng, L, W, H):
    yellow = np.array([235, 170, 20], dtype=np.float32)
    add(_box(0, 0, 0, L, W, 0.28 * H), (45, 45, 45), _TYRE)
    add(_box(-0.2 * L, 0, 0.28 * H, 0.6 * L, W, 0.37 * H), yellow, _PAINT)
    add(_box(-0.25 * L, 0.1 * W, 0.65 * H, 0.3 * L, 0.55 * W, 0.35 * H), yellow * 0.8, _PAINT)
    add(_box(0.3 * L, 0, 0.4 * H, 0.4 * L, 0.25 * W, 0.15 * H), (220, 120, 20), _PAINT)


def _pedestrian(add, rng, L, W, H, worker):
    shirt = np.array([240, 120, 20]) if worker else _CLOTHES[rng.integers(len(_CLOTHES))]
    trousers, skin = _CLOTHES[rng.integers(len(_CLOTHES))] * 0.5, _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
    for y in (-0.18 * W, 0.18 * W):
        add(_box(0.2 * L, y, 0, 0.6 * L, 0.24 * W, 0.05 * H), (30, 30, 30), _TYRE)          # shoes point forward
        add(_box(-0.05 * L, y, 0.05 * H, 0.3 * L, 0.24 * W, 0.42 * H), trousers, _CLOTH)
    add(_box(-0.05 * L, 0, 0.47 * H, 0.45 * L, W, 0.35 * H), shirt, _RETRO if worker else _CLOTH)
    add(_box(-0.38 * L, 0, 0.5 * H, 0.22 * L, 0.6 * W, 0.28 * H), (60, 50, 40), _CLOTH)      # backpack / back
    add(_box(0.04 * L, 0, 0.82 * H, 0.28 * L, 0.32 * W, 0.18 * H), skin, _SKIN)             # face forward
    add(_box(-0.14 * L, 0, 0.86 * H, 0.1 * L, 0.32 * W, 0.14 * H), (30, 25, 20), _CLOTH)     # hair behind


def _cycle(add, rng, label, L, W, H, with_rider):
    wheel = min(0.66, 0.45 * L) if label == "bicycle" else min(0.62, 0.4 * H)
    tyre_w = 0.06 if label == "bicycle" else 0.16
    add(_box(L / 2 - wheel / 2, 0, 0, wheel, tyre_w, wheel), (20, 20, 20), _TYRE)
    add(_box(-L / 2 + wheel / 2, 0, 0, wheel, tyre_w, wheel), (20, 20, 20), _TYRE)
    body_h = 0.2 * H if with_rider else 0.3 * H
    z_body = wheel * 0.55
    if label == "bicycle":
        add(_box(0, 0, z_body, L - wheel, 0.1, body_h), np.array([40, 150, 60]), _PAINT)
    else:
        add(_box(0.05 * L, 0, z_body, L - wheel, 0.55 * W, body_h), (160, 20, 20), _PAINT)
        add(_box(L / 2 - wheel / 2, 0, z_body + body_h, 0.1, 0.3 * W, 0.12), _HEADLIGHT, _RETRO)
        add(_box(-L / 2 + 0.08, 0, z_body + 0.5 * body_h, 0.16, 0.3 * W, 0.1), _TAILLIGHT, _TAIL_REFL)
    # Handlebars over the front wheel (stem and bar), saddle behind the centre: the cycle's front.
    bar_top = min(H, z_body + body_h + 0.45 * (H - z_body - body_h) + 0.25)
    add(_box(0.5 * (L / 2 - wheel / 2), 0, z_body + body_h, 0.06, 0.06, bar_top - z_body - body_h), (60, 60, 60), _PAINT)
    add(_box(0.5 * (L / 2 - wheel / 2), 0, bar_top - 0.05, 0.08, W, 0.05), (30, 30, 30), _PAINT)
    add(_box(-0.2 * L, 0, z_body + body_h, 0.22, 0.14, 0.08), (25, 25, 25), _CLOTH)
    if with_rider:
        z0 = z_body + body_h + 0.08
        seat_x, handle_x = -0.2 * L, 0.5 * (L / 2 - wheel / 2)
        _rider(add, rng, seat_x, 0.3, min(W, 0.45), z0, H - z0, reach=max(handle_x - seat_x - 0.15, 0.05))


def _traffic_cone(add, rng, L, W, H):
    add(_box(0, 0, 0, L, W, 0.06 * H), (20, 20, 20), _TYRE)
    add(_box(0, 0, 0.06 * H, 0.72 * L, 0.72 * W, 0.34 * H), (250, 100, 10), _RETRO)
    add(_box(0, 0, 0.4 * H, 0.5 * L, 0.5 * W, 0.3 * H), (245, 245, 245), _RETRO)
    add(_box(0, 0, 0.7 * H, 0.3 * L, 0.3 * W, 0.3 * H), (250, 100, 10), _RETRO)


def _barrier(add, rng, L, W, H):
    segments = 5  # odd, so that the stripes read the same from both ends
    for k in range(segments):
        cx = -L / 2 + (k + 0.5) * L / segments
        add(_box(cx, 0, 0, L / segments, W, 0.55 * H), (220, 30, 30) if k % 2 else (240, 240, 240), _RETRO)
    add(_box(0, 0, 0.55 * H, L, 0.6 * W, 0.45 * H), (225, 225, 215), _CONCRETE)


_SHAPES = {"car": _car, "truck": _truck, "bus": _bus, "trailer": _trailer,
           "construction_vehicle": _construction_vehicle, "traffic_cone": _traffic_cone, "barrier": _barrier}


def make_parts(rng: np.random.Generator, label: str, size, with_rider: bool = False, worker: bool = False):
    """Parts of one object of class ``label`` with annotation size ``(l, w, h)``.

    Returns ``parts`` (P, 6) float64 ``(cx, cy, cz, l, w, h)`` in the object frame, ``colors``
    (P, 3) float32 RGB and ``intensity`` (P,) float32.
    """
    if label not in SIZE_PRIORS:
        raise KeyError(f"no shape for class {label!r}; known classes: {sorted(SIZE_PRIORS)}")
    m = PART_MARGIN
    L, W, H = (float(v) - 2 * m for v in size)
    boxes, colors, refl = [], [], []

    def add(box, color, intensity):
        boxes.append(box)
        colors.append(np.asarray(color, dtype=np.float32))
        refl.append(intensity)

    if label == "pedestrian":
        _pedestrian(add, rng, L, W, H, worker)
    elif label in ("bicycle", "motorcycle"):
        _cycle(add, rng, label, L, W, H, with_rider)
    else:
        _SHAPES[label](add, rng, L, W, H)
    parts = np.asarray(boxes, dtype=np.float64)
    return parts, np.clip(np.stack(colors), 0, 255).astype(np.float32), np.asarray(refl, dtype=np.float32)
