from .bevfusion import BEVFusion, build_camera_encoder, invert_lidar_augmentation
from .simdistill import SimDistillStudent

__all__ = ["BEVFusion", "SimDistillStudent", "build_camera_encoder", "invert_lidar_augmentation"]
