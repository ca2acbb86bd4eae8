"""Scene layout and motion: a straight urban street with traffic, parking, sidewalks and houses.

Everything lives in a scene frame (x along the street, y to the left, z up, ground at z = 0);
``generate`` places the scene frame in the global frame. Cross-section (mirrored for y > 0):
inner lane |y| 0-3.5, outer lane 3.5-7, bike lane 7-8.5, parking strip 8.5-11.9, sidewalk
11.9-16.9 (two walking tracks, a strip for standing objects, poles and trees), houses from 18.
Traffic on y < 0 drives towards +x (the ego drives there), on y > 0 towards -x.

Objects never overlap: every object keeps to its strip, and all objects of one strip move at
the same speed with gaps between them, so their order and spacing are fixed for the scene.
Moving objects follow ``y = lane_y + amp * sin(wavenumber * x + phase)`` at constant speed
along x: a smooth path of gentle curvature whose heading is the direction of motion.

Before the random traffic, ``_place_anchors`` puts objects of all ten detection classes where
they stay within the devkit's class ranges of the ego for the whole scene (``coverage.py``):
vehicles travelling with the ego in its lane, road works and parked trailers along its route,
cyclists in the bike lane; the random fill then keeps clear of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .coverage import chain_positions, half_window
from .shapes import CATEGORY_OF, SIZE_PRIORS, make_parts, sample_size

__all__ = ["Motion", "SceneLayout", "build_scene", "SCENE_RANGE"]

INNER, OUTER, BIKE, PARKING = 1.75, 5.25, 7.75, 10.2
PED_TRACKS, STATIC_ZONE, POLE_Y, HOUSE_Y = (12.5, 13.6), 15.0, 16.4, 18.0
SCENE_RANGE = 100.0  # objects are laid out this far beyond the ego's path (metres)


@dataclass
class Motion:
    """Per-object motion parameters, arrays of shape (N,)."""

    x0: np.ndarray
    lane_y: np.ndarray
    speed: np.ndarray  # signed, along +x (m/s)
    amp: np.ndarray
    wavenumber: np.ndarray
    phase: np.ndarray
    heading: np.ndarray  # yaw of static objects

    def state(self, t: float):
        """Positions, yaw and velocity at time ``t`` (s): five (N,) arrays x, y, yaw, vx, vy."""
        x = self.x0 + self.speed * t
        arg = self.wavenumber * x + self.phase
        y = self.lane_y + self.amp * np.sin(arg)
        vx = self.speed.astype(np.float64)
        vy = self.amp * self.wavenumber * np.cos(arg) * vx
        moving = np.abs(vx) > 0
        yaw = np.where(moving, np.arctan2(vy, np.where(moving, vx, 1.0)), self.heading)
        return x, y, yaw, vx, vy


@dataclass
class SceneLayout:
    """Objects (annotated), clutter (not annotated), ego motion and lighting of one scene."""

    labels: list[str]
    categories: list[str]
    attributes: list[str]
    sizes: np.ndarray  # (N, 3) l, w, h of the annotation boxes
    motion: Motion
    part_local: np.ndarray  # (P, 6) cx, cy, cz, l, w, h in the object frame
    part_color: np.ndarray  # (P, 3) RGB
    part_intensity: np.ndarray  # (P,)
    part_owner: np.ndarray  # (P,) object index
    clutter: np.ndarray  # (C, 7) cx, cy, cz, l, w, h, yaw in the scene frame
    clutter_color: np.ndarray  # (C, 3)
    clutter_intensity: np.ndarray  # (C,)
    ego: Motion  # one element
    sun: np.ndarray  # (3,) unit vector towards the sun
    x_range: tuple[float, float]  # street extent covered by the layout

    def boxes_at(self, t: float) -> dict[str, np.ndarray]:
        """All boxes at time ``t``: ``center`` (M, 3), ``half`` (M, 3), ``yaw`` (M,), ``color``
        (M, 3), ``intensity`` (M,), ``owner`` (M,) object index, -1 for clutter."""
        x, y, yaw, _, _ = self.motion.state(t)
        o = self.part_owner
        c, s = np.cos(yaw[o]), np.sin(yaw[o])
        px, py = self.part_local[:, 0], self.part_local[:, 1]
        center = np.stack([x[o] + c * px - s * py, y[o] + s * px + c * py, self.part_local[:, 2]], axis=1)
        return dict(
            center=np.concatenate([center, self.clutter[:, :3]]),
            half=np.concatenate([self.part_local[:, 3:6], self.clutter[:, 3:6]]) / 2,
            yaw=np.concatenate([yaw[o], self.clutter[:, 6]]),
            color=np.concatenate([self.part_color, self.clutter_color]),
            intensity=np.concatenate([self.part_intensity, self.clutter_intensity]),
            owner=np.concatenate([o, np.full(len(self.clutter), -1)]),
        )

    def ego_pose(self, t: float) -> tuple[float, float, float]:
        """Ego (x, y, yaw) in the scene frame at time ``t``."""
        x, y, yaw, _, _ = self.ego.state(t)
        return float(x[0]), float(y[0]), float(yaw[0])


class _Builder:
    """Collects objects strip by strip."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.objects: list[dict] = []

    def add(self, label, x, lane_y, speed=0.0, heading=0.0, amp=0.0, wavelength=50.0, size=None,
            attribute="", category=None, **shape_kwargs):
        rng = self.rng
        size = sample_size(rng, label) if size is None else np.asarray(size, dtype=np.float64)
        parts, colors, intensity = make_parts(rng, label, size, **shape_kwargs)
        self.objects.append(dict(
            label=label, category=category or CATEGORY_OF[label], attribute=attribute, size=size,
            parts=parts, colors=colors, intensity=intensity, x0=x, lane_y=lane_y, speed=speed,
            amp=amp, wavenumber=2 * np.pi / wavelength, phase=rng.uniform(0, 2 * np.pi), heading=heading,
        ))


def _vehicle_attribute(speed: float, parked: bool) -> str:
    if abs(speed) > 0:
        return "vehicle.moving"
    return "vehicle.parked" if parked else "vehicle.stopped"


def _lane_object(b: _Builder, label, x, lane_y, speed, backwards=False) -> float:
    """One vehicle (or truck+trailer, or cycle with rider) of a lane whose traffic moves at
    ``speed`` (>= 0, signed by the side), occupying ``[x, x + length)`` (``[x - length, x)`` if
    ``backwards``); returns the length."""
    rng, direction = b.rng, 1.0 if lane_y < 0 else -1.0
    combo = label == "truck+trailer"
    cycle = label in ("motorcycle", "bicycle")
    size = _cycle_size(rng, label, True) if cycle else sample_size(rng, "trailer" if combo else label)
    lead_size = sample_size(rng, "truck") if combo else None
    total = size[0] + (lead_size[0] + 0.6 if combo else 0.0)
    x = x - total if backwards else x
    amp = 0.0 if combo else rng.uniform(0.0, 0.1 if cycle else 0.08)
    common = dict(lane_y=lane_y, speed=speed * direction, heading=0.0 if direction > 0 else np.pi, amp=amp,
                  wavelength=rng.uniform(15, 40) if cycle else rng.uniform(40, 120))
    if cycle:
        b.add(label, x + size[0] / 2, size=size, attribute="cycle.with_rider", with_rider=True, **common)
    elif combo:
        trailer_x = x + size[0] / 2 if direction > 0 else x + lead_size[0] + 0.6 + size[0] / 2
        truck_x = x + size[0] + 0.6 + lead_size[0] / 2 if direction > 0 else x + lead_size[0] / 2
        attr = _vehicle_attribute(speed, False)
        b.add("trailer", trailer_x, size=size, attribute=attr, **common)
        b.add("truck", truck_x, size=lead_size, attribute=attr, **common)
    else:
        b.add(label, x + size[0] / 2, size=size, attribute=_vehicle_attribute(speed, False), **common)
    return total


def _fill_lane(b: _Builder, x_lo, x_hi, lane_y, speed, mix, gap, reserved=()):
    """Vehicles along one lane, all at ``speed``; ``reserved``: (lo, hi) x intervals kept free."""
    rng = b.rng
    names, probs = zip(*mix.items())
    x = x_lo + rng.uniform(0, gap[1])
    while x < x_hi:
        label = names[rng.choice(len(names), p=np.asarray(probs) / sum(probs))]
        length = (SIZE_PRIORS["trailer"][0] + SIZE_PRIORS["truck"][0]) * 1.07 + 0.6 if label == "truck+trailer" \
            else SIZE_PRIORS[label][0] * 1.06
        blocked = [hi for lo, hi in reserved if x + length > lo and x < hi]
        if blocked:
            x = max(blocked) + rng.uniform(0.5 * gap[0], gap[0])
            continue
        x += _lane_object(b, label, x, lane_y, speed) + rng.uniform(*gap)


def _cycle_size(rng, label, with_rider):
    size = sample_size(rng, label)
    size[2] = rng.uniform(1.6, 1.8) if with_rider else rng.uniform(1.0, 1.2)
    return size


def _fill_parking(b: _Builder, x_lo, x_hi, side, reserved=()):
    """Parked vehicles and work zones; ``reserved``: (lo, hi) x intervals kept free."""
    rng = b.rng
    lane_y, heading = side * PARKING, (0.0 if side < 0 else np.pi)
    x = x_lo + rng.uniform(0, 10)
    mix = {"car": 0.45, "truck": 0.08, "trailer": 0.06, "bus": 0.04, "work_zone": 0.07, "gap": 0.3}
    names, probs = zip(*mix.items())
    while x < x_hi:
        kind = names[rng.choice(len(names), p=probs)]
        # A work zone is at most about 45 m long, a vehicle at most 13 m.
        blocked = [hi for lo, hi in reserved if x + (45.0 if kind == "work_zone" else 13.0) > lo and x < hi]
        if blocked:
            x = max(blocked) + rng.uniform(1.0, 6.0)
            continue
        if kind == "gap":
            x += rng.uniform(5, 25)
            continue
        if kind == "work_zone":
            x = _work_zone(b, x, lane_y)
        else:
            size = sample_size(rng, kind)
            jitter = rng.uniform(-1, 1) * min(0.03, 0.1 / size[0])
            attr = "vehicle.stopped" if kind == "bus" else _vehicle_attribute(0.0, True)
            b.add(kind, x + size[0] / 2, lane_y, heading=heading + jitter, size=size, attribute=attr)
            x += size[0]
        x += rng.uniform(1.0, 6.0)


def _barriers(b: _Builder, x, lane_y, count):
    """``count`` barriers in a row from ``x``; returns the x after them."""
    rng = b.rng
    for _ in range(count):
        size = sample_size(rng, "barrier")
        b.add("barrier", x + size[0] / 2, lane_y + rng.uniform(-0.8, 0.8), heading=rng.uniform(-0.05, 0.05), size=size)
        x += size[0] + rng.uniform(0.3, 1.0)
    return x


def _cones(b: _Builder, x, lane_y, count, spacing=(1.2, 2.5)):
    rng = b.rng
    for _ in range(count):
        size = sample_size(rng, "traffic_cone")
        b.add("traffic_cone", x + 0.3, lane_y + rng.uniform(-1.2, 1.2), heading=rng.uniform(0, np.pi), size=size)
        x += rng.uniform(*spacing)
    return x


def _machine(b: _Builder, x, lane_y, workers):
    """A construction vehicle followed by ``workers`` construction workers standing by."""
    rng = b.rng
    size = sample_size(rng, "construction_vehicle")
    b.add("construction_vehicle", x + size[0] / 2, lane_y, heading=rng.choice([0.0, np.pi]), size=size,
          attribute=rng.choice(["vehicle.parked", "vehicle.stopped"]))
    x += size[0] + 0.8
    for _ in range(workers):
        b.add("pedestrian", x + 0.5, lane_y + rng.uniform(-1.0, 1.0), heading=rng.uniform(-np.pi, np.pi),
              attribute="pedestrian.standing", category="human.pedestrian.construction_worker", worker=True)
        x += rng.uniform(1.2, 2.0)
    return x


def _work_zone(b: _Builder, x, lane_y):
    """Barriers, cones, workers and a construction vehicle in a row along the parking strip."""
    rng = b.rng
    x = _barriers(b, x, lane_y, rng.integers(1, 4))
    x = _cones(b, x, lane_y, rng.integers(2, 5))
    x = _machine(b, x, lane_y, rng.integers(0, 3))
    return _cones(b, x, lane_y, rng.integers(2, 5))


def _anchor_work_zone(b: _Builder, route, lane_y):
    """Road works along the ego's route, ``route`` metres from x = 0: barrier groups and machines
    with workers at ``chain_positions`` (so one of each stays in range of the passing ego), cones
    lining the rest. Returns the zone's (lo, hi) x extent."""
    rng = b.rng
    lateral = abs(lane_y) + 1.3 - INNER  # furthest object offset and ego sway included
    items = [(x, "barrier") for x in chain_positions(0.0, route, half_window("barrier", lateral))]
    machine_half = min(half_window("construction_vehicle", lateral), half_window("pedestrian", lateral))
    items += [(x, "machine") for x in chain_positions(0.0, route, machine_half)]
    items.sort()
    start = x = items[0][0] - 12.0
    for target, kind in items:
        count = int(rng.integers(1, 4)) if kind == "barrier" else int(rng.integers(1, 3))
        width = 3.2 * count if kind == "barrier" else 8.0 + 1.6 * count
        begin = max(x, target - width / 2)
        x = _cones(b, x, lane_y, int((begin - x) // 3.5), spacing=(3.0, 3.5))
        place = _barriers if kind == "barrier" else _machine
        x = place(b, max(x, begin), lane_y, count)
        x += rng.uniform(0.5, 1.5)
    x = _cones(b, x, lane_y, int(rng.integers(2, 4)), spacing=(2.0, 3.5))
    return start, x


def _place_anchors(b: _Builder, ego_speed, bike_speed, duration) -> dict[float, list[tuple[float, float]]]:
    """Objects of every class that stay in range of the ego for the whole scene (coverage.py).

    Ego lane: a car and a motorcycle right ahead of and behind the ego, a bus and a truck beyond
    them, all travelling with the ego. Right parking strip: road works along the route. Left
    parking strip: parked trailers along the route. Right bike lane: cyclists spread so that
    one is always near the ego. Returns the x intervals (at t = 0) taken, keyed by strip y.
    """
    rng = b.rng
    route = ego_speed * duration
    near = [str(v) for v in rng.permutation(["car", "motorcycle"])]
    far = [str(v) for v in rng.permutation(["bus", "truck"])]
    ahead = 16.0 + rng.uniform(0.0, 6.0)
    ahead += _lane_object(b, near[0], ahead, -INNER, ego_speed) + rng.uniform(2.0, 8.0)
    ahead += _lane_object(b, far[0], ahead, -INNER, ego_speed)
    behind = -14.0 - rng.uniform(0.0, 6.0)
    behind -= _lane_object(b, near[1], behind, -INNER, ego_speed, backwards=True) + rng.uniform(2.0, 8.0)
    behind -= _lane_object(b, far[1], behind, -INNER, ego_speed, backwards=True)
    reserved = {-INNER: [(behind - 3.0, ahead + 3.0)]}

    lo, hi = _anchor_work_zone(b, route, -PARKING)
    reserved[-PARKING] = [(lo - 2.0, hi + 2.0)]

    reserved[PARKING] = []
    for x in chain_positions(0.0, route, half_window("trailer", PARKING + INNER + 0.2)):
        size = sample_size(rng, "trailer")
        b.add("trailer", x, PARKING, heading=np.pi + rng.uniform(-0.02, 0.02), size=size, attribute="vehicle.parked")
        reserved[PARKING].append((x - size[0] / 2 - 2.0, x + size[0] / 2 + 2.0))

    reserved[-BIKE] = []
    drift = (ego_speed - bike_speed) * duration  # how far the cyclists fall behind the ego
    for x in chain_positions(min(0.0, drift), max(0.0, drift), half_window("bicycle", BIKE - INNER + 0.2)):
        length = _lane_object(b, "bicycle", x - 0.9, -BIKE, bike_speed)
        reserved[-BIKE].append((x - 3.0, x - 0.9 + length + 2.0))
    return reserved


def _fill_sidewalk(b: _Builder, x_lo, x_hi, side):
    rng = b.rng
    for track in PED_TRACKS:
        speed = rng.uniform(0.9, 1.7) * rng.choice([-1.0, 1.0])
        heading = 0.0 if speed > 0 else np.pi
        x = x_lo + rng.uniform(0, 10)
        while x < x_hi:
            b.add("pedestrian", x + 0.5, side * track, speed=speed, heading=heading, amp=0.05,
                  wavelength=rng.uniform(6, 12), attribute="pedestrian.moving")
            x += rng.uniform(8.0, 80.0)
    mix = {"standing": 0.35, "sitting": 0.08, "bicycle": 0.15, "motorcycle": 0.07, "traffic_cone": 0.05, "gap": 0.3}
    names, probs = zip(*mix.items())
    x = x_lo + rng.uniform(0, 10)
    while x < x_hi:
        kind = names[rng.choice(len(names), p=probs)]
        y = side * STATIC_ZONE
        if kind in ("standing", "sitting"):
            size = sample_size(rng, "pedestrian")
            if kind == "sitting":
                size = np.array([0.8, 0.6, rng.uniform(1.1, 1.3)])
            b.add("pedestrian", x + 0.5, y + rng.uniform(-0.2, 0.2), heading=rng.uniform(-np.pi, np.pi), size=size,
                  attribute="pedestrian.standing" if kind == "standing" else "pedestrian.sitting_lying_down")
            x += 1.0
        elif kind in ("bicycle", "motorcycle"):
            size = _cycle_size(rng, kind, False)
            b.add(kind, x + size[0] / 2, y, heading=rng.choice([0.0, np.pi]) + rng.uniform(-0.05, 0.05),
                  size=size, attribute="cycle.without_rider")
            x += size[0]
        elif kind == "traffic_cone":
            b.add("traffic_cone", x + 0.3, y, heading=rng.uniform(0, np.pi))
            x += 0.6
        x += rng.uniform(5.0, 45.0)


def _clutter(rng, x_lo, x_hi):
    """Houses, lamp poles and trees along both sides: (C, 7) boxes, colours and intensities."""
    boxes, colors, refl = [], [], []
    walls = np.array([[200, 190, 170], [170, 110, 90], [150, 150, 155], [220, 215, 200], [120, 130, 140]])
    for side in (-1, 1):
        x = x_lo
        while x < x_hi:
            length, depth, height = rng.uniform(8, 30), rng.uniform(6, 14), rng.uniform(4, 22)
            wall = walls[rng.integers(len(walls))]
            cy = side * (HOUSE_Y + depth / 2)
            boxes.append([x + length / 2, cy, height / 2, length, depth, height, 0.0])
            colors.append(wall)
            refl.append(45.0)
            # Ground floor: a darker band 1 m deep standing 0.1 m proud of the facade.
            boxes.append([x + length / 2, side * (HOUSE_Y + 0.4), 1.6, length - 0.4, 1.0, 3.2, 0.0])
            colors.append(wall * 0.55)
            refl.append(30.0)
            x += length + rng.uniform(2, 12)
        x = x_lo + rng.uniform(0, 10)
        while x < x_hi:
            boxes.append([x, side * POLE_Y, 3.25, 0.2, 0.2, 6.5, 0.0])
            colors.append([110, 110, 115])
            refl.append(60.0)
            boxes.append([x, side * (POLE_Y - 1.0), 6.4, 0.25, 2.0, 0.2, 0.0])
            colors.append([110, 110, 115])
            refl.append(60.0)
            gap = rng.uniform(18, 32)
            if rng.uniform() < 0.6:
                tx = x + gap / 2
                boxes.append([tx, side * POLE_Y, 1.3, 0.3, 0.3, 2.6, 0.0])
                colors.append([100, 70, 40])
                refl.append(25.0)
                crown = rng.uniform(1.6, 2.0)
                boxes.append([tx, side * POLE_Y, 2.65 + crown / 2, crown, crown, crown, 0.0])
                colors.append([50, 110, 45])
                refl.append(15.0)
            x += gap
    return (np.asarray(boxes, dtype=np.float64), np.asarray(colors, dtype=np.float32),
            np.asarray(refl, dtype=np.float32))


def build_scene(rng: np.random.Generator, duration: float) -> SceneLayout:
    """A random street scene lasting ``duration`` seconds (ego drives from x = 0 along +x)."""
    ego_speed = rng.uniform(4.0, 9.0)
    x_lo, x_hi = -SCENE_RANGE, ego_speed * duration + SCENE_RANGE
    bike_speeds = rng.uniform(2.5, 6.0, size=2)
    b = _Builder(rng)
    reserved = _place_anchors(b, ego_speed, bike_speeds[0], duration)
    car_mix = {"car": 0.78, "truck": 0.12, "bus": 0.06, "motorcycle": 0.04}
    outer_mix = {"car": 0.62, "truck": 0.12, "bus": 0.1, "truck+trailer": 0.06, "motorcycle": 0.1}
    for side, bike_speed in zip((-1, 1), bike_speeds):
        for lane_y, mix in ((INNER, car_mix), (OUTER, outer_mix)):
            if side < 0 and lane_y == INNER:
                speed = ego_speed
            elif rng.uniform() < 0.2:
                speed = 0.0
            elif side < 0:  # no tall vehicle keeps pace beside the ego, hiding the road works for long
                slow, fast = max(ego_speed - 2.5 - 3.0, 0.0), 12.0 - ego_speed - 2.5
                pick = rng.uniform(0.0, slow + fast)
                speed = 3.0 + pick if pick < slow else ego_speed + 2.5 + pick - slow
            else:
                speed = rng.uniform(3.0, 12.0)
            reach = abs(speed) * duration
            _fill_lane(b, x_lo - reach, x_hi + reach, side * lane_y, speed, mix, (10.0, 70.0),
                       reserved.get(side * lane_y, ()))
        reach = bike_speed * duration
        _fill_lane(b, x_lo - reach, x_hi + reach, side * BIKE, bike_speed, {"bicycle": 0.7, "motorcycle": 0.3},
                   (20.0, 120.0), reserved.get(side * BIKE, ()))
        _fill_parking(b, x_lo, x_hi, side, reserved.get(side * PARKING, ()))
        _fill_sidewalk(b, x_lo - 2 * duration, x_hi + 2 * duration, side)
    objs = b.objects
    parts = [o["parts"] for o in objs]
    motion = Motion(*(np.array([o[k] for o in objs], dtype=np.float64)
                      for k in ("x0", "lane_y", "speed", "amp", "wavenumber", "phase", "heading")))
    ego = Motion(np.zeros(1), np.full(1, -INNER), np.full(1, ego_speed), np.full(1, rng.uniform(0.0, 0.1)),
                 np.full(1, 2 * np.pi / rng.uniform(60, 120)), np.full(1, rng.uniform(0, 2 * np.pi)), np.zeros(1))
    clutter, clutter_color, clutter_intensity = _clutter(rng, x_lo - 40, x_hi + 40)
    sun_az, sun_el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(30, 65))
    sun = np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)])
    return SceneLayout(
        labels=[o["label"] for o in objs],
        categories=[o["category"] for o in objs],
        attributes=[o["attribute"] for o in objs],
        sizes=np.array([o["size"] for o in objs]),
        motion=motion,
        part_local=np.concatenate(parts),
        part_color=np.concatenate([o["colors"] for o in objs]),
        part_intensity=np.concatenate([o["intensity"] for o in objs]),
        part_owner=np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]),
        clutter=clutter,
        clutter_color=clutter_color,
        clutter_intensity=clutter_intensity,
        ego=ego,
        sun=sun,
        x_range=(x_lo - 60, x_hi + 60),
    )
