from .pillars import DynamicPillarFeatureNet, PillarFeatureNet, PointPillarsEncoder, PointPillarsScatter, bev_grid_size
from .sparse_encoder import SparseEncoder, import_spconv
from .voxelization import DynamicVoxelization, Voxelization

__all__ = ["DynamicPillarFeatureNet", "DynamicVoxelization", "PillarFeatureNet", "PointPillarsEncoder",
           "PointPillarsScatter", "SparseEncoder", "Voxelization", "bev_grid_size", "import_spconv"]
