"""Model stages in data-flow order; importing each package registers its components."""
from . import backbones, necks, vtransforms, lidar, fusers, heads, losses, fusion_models  # noqa: F401
from .builder import (
    BACKBONES,
    DISTILLERS,
    FUSERS,
    FUSION_MODELS,
    HEADS,
    LIDAR_BACKBONES,
    LOSSES,
    NECKS,
    VOXELIZERS,
    VTRANSFORMS,
    build_model,
)

__all__ = [
    "BACKBONES",
    "DISTILLERS",
    "FUSERS",
    "FUSION_MODELS",
    "HEADS",
    "LIDAR_BACKBONES",
    "LOSSES",
    "NECKS",
    "VOXELIZERS",
    "VTRANSFORMS",
    "build_model",
]
