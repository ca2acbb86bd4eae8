"""Data pipeline steps; importing this package registers every step in ``PIPELINES``."""
from .compose import Compose
from .dbsampler import DataBaseSampler, ObjectPaste, bev_boxes_collide, create_groundtruth_database
from .depth_targets import DepthTargets
from .formatting import Collect3D, DefaultFormatBundle3D, collate
from .image_transforms import ImageAug3D, ImageNormalize
from .loading import LoadAnnotations3D, LoadMultiViewImageFromFiles, LoadPointsFromFile, LoadPointsFromMultiSweeps
from .transforms_3d import (
    GlobalRotScaleTrans,
    ObjectNameFilter,
    ObjectRangeFilter,
    PointShuffle,
    PointsRangeFilter,
    RandomFlip3D,
)

__all__ = [
    "Collect3D",
    "Compose",
    "DataBaseSampler",
    "DefaultFormatBundle3D",
    "DepthTargets",
    "GlobalRotScaleTrans",
    "ImageAug3D",
    "ImageNormalize",
    "LoadAnnotations3D",
    "LoadMultiViewImageFromFiles",
    "LoadPointsFromFile",
    "LoadPointsFromMultiSweeps",
    "ObjectNameFilter",
    "ObjectPaste",
    "ObjectRangeFilter",
    "PointShuffle",
    "PointsRangeFilter",
    "RandomFlip3D",
    "bev_boxes_collide",
    "collate",
    "create_groundtruth_database",
]
