"""Model stages in data-flow order; importing each package registers its components."""
from . import backbones, necks, vtransforms, bev_layers, lidar, fusers, heads, losses, fusion_models, distillers  # noqa: F401
from .builder import (
    BACKBONES,
    BEV_LAYERS,
    DISTILL_LOSSES,
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
    "BEV_LAYERS",
    "DISTILL_LOSSES",
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
