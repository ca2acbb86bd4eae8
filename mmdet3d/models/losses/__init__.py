from .depth_loss import DenseDepthLoss, dense_depth_loss, depth_bin_targets
from .gaussian_focal_loss import GaussianFocalLoss, gaussian_focal_loss
from .l1_loss import L1Loss
from .utils import reduce_loss

__all__ = ["DenseDepthLoss", "dense_depth_loss", "depth_bin_targets", "GaussianFocalLoss", "L1Loss", "gaussian_focal_loss", "reduce_loss"]
