"""Registries of the model stages, in data-flow order."""
from mmdet3d.utils.registry import Registry

BACKBONES = Registry("backbone")
NECKS = Registry("neck")
VTRANSFORMS = Registry("vtransform")
BEV_LAYERS = Registry("bev_layer")
VOXELIZERS = Registry("voxelizer")
LIDAR_BACKBONES = Registry("lidar_backbone")
FUSERS = Registry("fuser")
HEADS = Registry("head")
LOSSES = Registry("loss")
FUSION_MODELS = Registry("fusion_model")
DISTILLERS = Registry("distiller")
DISTILL_LOSSES = Registry("distill_loss")


def build_model(cfg, **default_args):
    """A top-level model: a fusion model, or a distiller wrapping one."""
    if cfg is not None and cfg.get("type") in DISTILLERS:
        return DISTILLERS.build(cfg, **default_args)
    return FUSION_MODELS.build(cfg, **default_args)
