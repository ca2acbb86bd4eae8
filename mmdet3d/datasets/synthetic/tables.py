"""nuScenes v1.0 static tables (category, attribute, visibility, sensor) and token helpers.

Names and meanings follow nuScenes; tokens are 32 hex digits derived from the record's identity,
so identical arguments give identical tables. Visibility tokens are "1".."4" as in nuScenes.
"""
from __future__ import annotations

import hashlib

from .rig import CAMERA_CHANNELS, LIDAR_CHANNEL

__all__ = ["make_token", "CATEGORIES", "ATTRIBUTES", "VISIBILITY_LEVELS", "static_tables", "visibility_token"]


def make_token(*parts) -> str:
    """Deterministic 32-hex-digit token of ``parts``."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


CATEGORIES: dict[str, str] = {
    "human.pedestrian.adult": "Adult person walking, standing or sitting.",
    "human.pedestrian.child": "Child person.",
    "human.pedestrian.wheelchair": "Person in a wheelchair.",
    "human.pedestrian.stroller": "Stroller, with or without a child.",
    "human.pedestrian.personal_mobility": "Person on a small personal mobility device such as a scooter.",
    "human.pedestrian.police_officer": "Police officer.",
    "human.pedestrian.construction_worker": "Person working at a construction site.",
    "animal": "Animal.",
    "vehicle.car": "Passenger car, van or SUV.",
    "vehicle.motorcycle": "Motorcycle or scooter, with or without rider.",
    "vehicle.bicycle": "Bicycle, with or without rider.",
    "vehicle.bus.bendy": "Articulated bus.",
    "vehicle.bus.rigid": "Rigid bus.",
    "vehicle.truck": "Truck for goods: pickups, lorries, tractor units.",
    "vehicle.construction": "Construction vehicle: excavator, crane, bulldozer.",
    "vehicle.emergency.ambulance": "Ambulance.",
    "vehicle.emergency.police": "Police vehicle.",
    "vehicle.trailer": "Trailer pulled by a vehicle, with or without the vehicle.",
    "movable_object.barrier": "Temporary road barrier.",
    "movable_object.trafficcone": "Traffic cone.",
    "movable_object.pushable_pullable": "Object pushed or pulled by a person: cart, bin.",
    "movable_object.debris": "Debris on the road.",
    "static_object.bicycle_rack": "Rack for parking bicycles.",
}

ATTRIBUTES: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle with a driver is stopped, e.g. at a light.",
    "vehicle.parked": "Vehicle is parked without a driver.",
    "cycle.with_rider": "A rider is on the cycle.",
    "cycle.without_rider": "No rider is on the cycle.",
    "pedestrian.sitting_lying_down": "Person is sitting or lying down.",
    "pedestrian.standing": "Person is standing.",
    "pedestrian.moving": "Person is moving.",
}

# (token, level, lower bound of the visible fraction)
VISIBILITY_LEVELS = (("1", "v0-40", 0.0), ("2", "v40-60", 0.4), ("3", "v60-80", 0.6), ("4", "v80-100", 0.8))


def visibility_token(fraction: float) -> str:
    """Token of the nuScenes visibility bin of a visible fraction in [0, 1]."""
    token = VISIBILITY_LEVELS[0][0]
    for tok, _, lower in VISIBILITY_LEVELS:
        if fraction >= lower:
            token = tok
    return token


def static_tables() -> dict[str, list[dict]]:
    """The category, attribute, visibility and sensor tables."""
    visibility = []
    for tok, level, lower in VISIBILITY_LEVELS:
        upper = {"1": 40, "2": 60, "3": 80, "4": 100}[tok]
        visibility.append(dict(token=tok, level=level,
                               description=f"visibility of whole object is between {int(lower * 100)} and {upper}%"))
    sensors = [dict(token=make_token("sensor", ch), channel=ch, modality="camera") for ch in CAMERA_CHANNELS]
    sensors.append(dict(token=make_token("sensor", LIDAR_CHANNEL), channel=LIDAR_CHANNEL, modality="lidar"))
    return dict(
        category=[dict(token=make_token("category", n), name=n, description=d) for n, d in CATEGORIES.items()],
        attribute=[dict(token=make_token("attribute", n), name=n, description=d) for n, d in ATTRIBUTES.items()],
        visibility=visibility,
        sensor=sensors,
    )
