"""Distillation losses: functions and the registered modules that call them."""
from .base import DistillLoss
from .tig import (box_lattice_points, inner_depth_loss, inter_channel_loss, inter_keypoint_loss, relation_loss,
                  sample_box_keypoints)
from .tig_modules import InnerDepthLoss, InterChannelLoss, InterKeypointLoss

__all__ = ["DistillLoss", "InnerDepthLoss", "InterChannelLoss", "InterKeypointLoss", "box_lattice_points",
           "inner_depth_loss", "inter_channel_loss", "inter_keypoint_loss", "relation_loss", "sample_box_keypoints"]
