from .pillars import PillarFeatureNet, PointPillarsEncoder, PointPillarsScatter, bev_grid_size
from .sparse_encoder import SparseEncoder, import_spconv

__all__ = ["PillarFeatureNet", "PointPillarsEncoder", "PointPillarsScatter", "SparseEncoder", "bev_grid_size", "import_spconv"]
