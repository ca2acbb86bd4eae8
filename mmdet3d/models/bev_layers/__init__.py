"""Layers that refine a BEV map in place of shape (B, C, X, Y) -> (B, C, X, Y): SimDistill's
geometry compensation module (deformable self-attention or modulated deformable convolutions)."""
from .geometry_compensation import DeformableBEVAttention, ModulatedDeformConvBEV

__all__ = ["DeformableBEVAttention", "ModulatedDeformConvBEV"]
