from .base import BaseTransform, depth_bin_centers
from .depth_lss import DepthLSSTransform, points_to_depth_image
from .lss import LSSTransform

__all__ = ["BaseTransform", "DepthLSSTransform", "LSSTransform", "depth_bin_centers", "points_to_depth_image"]
