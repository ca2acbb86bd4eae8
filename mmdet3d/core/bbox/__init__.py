from .matching import center_distance_matches
from .structures import (
    bev_corners,
    bottom_to_gravity_center,
    box_corners,
    count_points_in_boxes,
    gravity_to_bottom_center,
    points_in_boxes,
    rotation_z,
)

__all__ = [
    "bev_corners",
    "bottom_to_gravity_center",
    "box_corners",
    "center_distance_matches",
    "count_points_in_boxes",
    "gravity_to_bottom_center",
    "points_in_boxes",
    "rotation_z",
]
