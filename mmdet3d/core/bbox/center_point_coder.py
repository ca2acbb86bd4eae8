"""CenterPoint box code on a BEV grid: boxes <-> (offset, height, log size, sin/cos yaw, velocity).

The grid covers ``point_cloud_range`` in x and y with ``X x Y`` cells; ``X, Y`` are read from
the head's feature map, so the cell size is ``(x_max - x_min) / X``. A box centred at
continuous cell coordinate ``(u, v) = ((x - x_min) / cell_x, (y - y_min) / cell_y)`` lives in cell
``(floor(u), floor(v))`` and is encoded as

    reg (2): u - floor(u), v - floor(v)      height (1): z (gravity centre)
    dim (3): log dx, log dy, log dz          rot (2): sin yaw, cos yaw
    vel (2): vx, vy  (optional)
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["CenterPointBoxCoder", "CODE_SIZES"]

# Regression groups in code order and their widths.
CODE_SIZES = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}


class CenterPointBoxCoder:
    def __init__(self, point_cloud_range: Sequence[float], code_names: Sequence[str] = tuple(CODE_SIZES)):
        unknown = [n for n in code_names if n not in CODE_SIZES]
        missing = [n for n in ("reg", "height", "dim", "rot") if n not in code_names]
        if unknown or missing:
            raise ValueError(
                f"box code groups must be among {list(CODE_SIZES)} and include reg, height, dim, rot; "
                f"unknown {unknown}, missing {missing}"
            )
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.code_names = [n for n in CODE_SIZES if n in code_names]
        self.code_size = sum(CODE_SIZES[n] for n in self.code_names)
        self.with_velocity = "vel" in self.code_names

    def cell_size(self, grid_size: Sequence[int]) -> tuple[float, float]:
        """(X, Y) cells -> (cell_x, cell_y) metres."""
        x_min, y_min, _, x_max, y_max, _ = self.point_cloud_range
        return (x_max - x_min) / grid_size[0], (y_max - y_min) / grid_size[1]

    def grid_coordinates(self, xy: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
        """(M, 2) metres -> (M, 2) continuous cell coordinates (u, v)."""
        cell_x, cell_y = self.cell_size(grid_size)
        origin = xy.new_tensor(self.point_cloud_range[:2])
        return (xy - origin) / xy.new_tensor([cell_x, cell_y])

    def encode(self, boxes: torch.Tensor, grid_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 9) boxes -> cells (M, 2) int64 ``(x_index, y_index)`` and codes (M, code_size)."""
        uv = self.grid_coordinates(boxes[:, :2], grid_size)
        cells = uv.floor()
        groups = {
            "reg": uv - cells,
            "height": boxes[:, 2:3],
            "dim": boxes[:, 3:6].clamp(min=1e-3).log(),
            "rot": torch.stack([boxes[:, 6].sin(), boxes[:, 6].cos()], dim=1),
            "vel": boxes[:, 7:9] if boxes.shape[1] >= 9 else boxes.new_zeros(len(boxes), 2),
        }
        codes = torch.cat([groups[n] for n in self.code_names], dim=1)
        return cells.long(), codes

    def decode(self, codes: torch.Tensor, cells: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
        """codes (K, code_size), cells (K, 2) ``(x_index, y_index)`` -> (K, 9) gravity-centre boxes."""
        groups = dict(zip(self.code_names, codes.split([CODE_SIZES[n] for n in self.code_names], dim=1)))
        cell_x, cell_y = self.cell_size(grid_size)
        uv = cells.to(codes.dtype) + groups["reg"]
        x = uv[:, 0] * cell_x + self.point_cloud_range[0]
        y = uv[:, 1] * cell_y + self.point_cloud_range[1]
        yaw = torch.atan2(groups["rot"][:, 0], groups["rot"][:, 1])
        velocity = groups["vel"] if self.with_velocity else codes.new_zeros(len(codes), 2)
        return torch.cat(
            [x[:, None], y[:, None], groups["height"], groups["dim"].exp(), yaw[:, None], velocity], dim=1
        )
