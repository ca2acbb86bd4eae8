"""Distillation losses: functions and the registered modules that call them."""
from .base import DistillLoss
from .lgkd import (box_footprint_mask, camera_view_loss, depth_kd_loss, lidar_occupancy_mask, reduce_bev_mask,
                   sigmoid_kd_loss)
from .lgkd_modules import DepthKDLoss, LiDARGuidedFeatureLoss, SigmoidHeatmapKDLoss
from .self_assessment import SelfAssessmentLoss, attention_distill, to_sequences
from .simdistill import box_code_kd_loss, gt_heatmap_mask, gt_targets, masked_mse, quality_focal_kd_loss
from .simdistill_modules import BoxCodeKDLoss, FeatureMSELoss, HeatmapMaskedMSELoss, QualityFocalKDLoss
from .tig import (box_lattice_points, inner_depth_loss, inter_channel_loss, inter_keypoint_loss, relation_loss,
                  sample_box_keypoints)
from .tig_modules import InnerDepthLoss, InterChannelLoss, InterKeypointLoss

__all__ = ["BoxCodeKDLoss", "DepthKDLoss", "DistillLoss", "FeatureMSELoss", "HeatmapMaskedMSELoss", "InnerDepthLoss",
           "InterChannelLoss", "InterKeypointLoss", "LiDARGuidedFeatureLoss", "QualityFocalKDLoss", "SelfAssessmentLoss",
           "SigmoidHeatmapKDLoss", "attention_distill", "box_code_kd_loss", "box_footprint_mask", "box_lattice_points",
           "camera_view_loss", "depth_kd_loss", "gt_heatmap_mask", "gt_targets", "inner_depth_loss", "inter_channel_loss",
           "inter_keypoint_loss", "lidar_occupancy_mask", "masked_mse", "quality_focal_kd_loss", "reduce_bev_mask",
           "relation_loss", "sample_box_keypoints", "sigmoid_kd_loss", "to_sequences"]
