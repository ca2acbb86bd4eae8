from .base import BaseTransform, PoolStructureCache, depth_bin_centers, share_pool_structures
from .depth_lss import DepthLSSTransform, points_to_depth_image
from .lss import LSSTransform

__all__ = ["BaseTransform", "DepthLSSTransform", "LSSTransform", "PoolStructureCache", "depth_bin_centers",
           "points_to_depth_image", "share_pool_structures"]
