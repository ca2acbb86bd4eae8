"""Pure PyTorch ops: BEV pooling, voxelization, rotated IoU and BEV NMS."""
from .bev_pool import BEVPoolGeometry, bev_cell_index, bev_grid, bev_pool, bev_pool_reference
from .iou3d import bev_intersection_rotated, iou_3d, iou_bev_aligned, iou_bev_rotated, to_bev_boxes
from .nms import circle_nms, nms_bev
from .voxelize import dynamic_voxelize, voxel_grid_size, voxelize

__all__ = [
    "BEVPoolGeometry", "bev_cell_index", "bev_grid", "bev_intersection_rotated", "bev_pool",
    "bev_pool_reference", "circle_nms", "iou_3d", "iou_bev_aligned", "iou_bev_rotated", "nms_bev",
    "dynamic_voxelize", "to_bev_boxes", "voxel_grid_size", "voxelize",
]
