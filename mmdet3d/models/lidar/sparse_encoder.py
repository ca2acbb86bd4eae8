"""SparseEncoder: the voxel LiDAR backbone (SECOND-style sparse 3D convs) through spconv.

spconv is optional: it is imported when the encoder is built, and a config that needs it
fails there with a message naming the CPU alternative. Its CPU build runs forward only, so
the CPU default LiDAR encoder is ``PointPillarsEncoder``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..builder import LIDAR_BACKBONES

__all__ = ["SparseEncoder", "import_spconv"]


def import_spconv():
    """Return the ``spconv.pytorch`` module or raise an ImportError that says what to do."""
    try:
        import spconv.pytorch as spconv
    except ImportError as e:
        raise ImportError(
            "SparseEncoder needs spconv (pip install spconv-cu120 or the build matching your CUDA); "
            "it is not installed. On CPU use the PointPillars LiDAR encoder "
            "(encoders.lidar.backbone.type: PointPillarsEncoder)."
        ) from e
    return spconv


@LIDAR_BACKBONES.register_module()
class SparseEncoder(nn.Module):
    """Voxels (V, M, C_point) -> BEV (B, C_out * Z_out, X_out, Y_out).

    Voxel features are the mean of their points; coords rows are ``(b, x, y, z)`` on a
    ``sparse_shape = (X, Y, Z)`` grid. A submanifold input conv to ``base_channels``, then one
    stage per entry of ``encoder_channels`` (a stride-2 sparse conv, except the first stage,
    followed by submanifold convs), then a (1, 1, 3) conv with z-stride 2 to ``output_channels``.
    Dense output ``(B, C, X, Y, Z)`` has z folded into channels, z-major like ``bev_pool``.
    """

    def __init__(
        self,
        in_channels: int,
        sparse_shape: Sequence[int],
        base_channels: int = 16,
        output_channels: int = 128,
        encoder_channels: Sequence[Sequence[int]] = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
    ):
        super().__init__()
        spconv = import_spconv()
        self.in_channels = in_channels
        self.sparse_shape = [int(s) for s in sparse_shape]

        def block(conv, c_in, c_out, **kwargs):
            return spconv.SparseSequential(conv(c_in, c_out, bias=False, **kwargs), nn.BatchNorm1d(c_out), nn.ReLU())

        self.conv_input = block(spconv.SubMConv3d, in_channels, base_channels, kernel_size=3, padding=1, indice_key="subm1")
        self.encoder_layers = spconv.SparseSequential()
        channels, depth = base_channels, self.sparse_shape[2]
        for s, stage in enumerate(encoder_channels):
            layers = []
            for j, width in enumerate(stage):
                if j == 0 and s > 0:
                    layers.append(block(spconv.SparseConv3d, channels, width, kernel_size=3, stride=2, padding=1,
                                        indice_key=f"spconv{s + 1}"))
                else:
                    layers.append(block(spconv.SubMConv3d, channels, width, kernel_size=3, padding=1,
                                        indice_key=f"subm{s + 1}"))
                channels = width
            if s > 0:
                depth = (depth + 1) // 2
            self.encoder_layers.add_module(f"encoder_layer{s + 1}", spconv.SparseSequential(*layers))
        self.conv_out = block(spconv.SparseConv3d, channels, output_channels, kernel_size=(1, 1, 3),
                              stride=(1, 1, 2), padding=0, indice_key="spconv_down2")
        self.out_channels = output_channels * ((depth - 3) // 2 + 1)
        self._spconv = spconv

    def forward(self, voxels: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        mask = torch.arange(voxels.shape[1], device=voxels.device)[None, :] < num_points[:, None]
        features = (voxels * mask[..., None]).sum(1) / num_points.clamp(min=1)[:, None].to(voxels.dtype)
        x = self._spconv.SparseConvTensor(features, coords.int(), self.sparse_shape, batch_size)
        x = self.conv_out(self.encoder_layers(self.conv_input(x)))
        dense = x.dense()  # (B, C, X, Y, Z)
        # (B, C, X, Y, Z) -> (B, Z, C, X, Y) -> (B, Z*C, X, Y)
        batch, channels, num_x, num_y, num_z = dense.shape
        return dense.permute(0, 4, 1, 2, 3).reshape(batch, num_z * channels, num_x, num_y)
