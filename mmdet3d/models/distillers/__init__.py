"""Teacher-student wrappers and their distillation losses."""
from .bev_distiller import BEVDistiller, named_tensors
from .losses import (InnerDepthLoss, InterChannelLoss, InterKeypointLoss, inner_depth_loss, inter_channel_loss,
                     inter_keypoint_loss, sample_box_keypoints)

__all__ = ["BEVDistiller", "InnerDepthLoss", "InterChannelLoss", "InterKeypointLoss", "inner_depth_loss",
           "inter_channel_loss", "inter_keypoint_loss", "named_tensors", "sample_box_keypoints"]
