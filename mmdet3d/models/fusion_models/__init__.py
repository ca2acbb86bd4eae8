from .bevfusion import BEVFusion, invert_lidar_augmentation

__all__ = ["BEVFusion", "invert_lidar_augmentation"]
