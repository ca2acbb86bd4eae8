from .gaussian_focal_loss import GaussianFocalLoss, gaussian_focal_loss
from .l1_loss import L1Loss
from .utils import reduce_loss

__all__ = ["GaussianFocalLoss", "L1Loss", "gaussian_focal_loss", "reduce_loss"]
