"""CenterPoint heatmap targets: Gaussian radius from a box footprint, Gaussian splatting.

Heatmaps are indexed ``heatmap[row, col]``; a centre is given as ``(col, row)`` (CenterNet's
``(x, y)`` image convention). A BEV map laid out ``(X, Y)`` is drawn on through its transposed
view ``heatmap.T`` with the centre ``(x_index, y_index)``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["gaussian_radius", "gaussian_2d", "draw_heatmap_gaussian"]


def gaussian_radius(det_size: tuple[float, float], min_overlap: float = 0.5) -> float:
    """Radius (in cells) by which a box of ``det_size = (height, width)`` cells may shift corners.

    CenterNet/CenterPoint: the smallest of the three radii for which a box with both corners
    moved (case 1: one corner inside, one outside; case 2: both inside; case 3: both outside)
    still has IoU ``min_overlap`` with the original. Each is the root of a
    quadratic in ``r``; CenterPoint divides the root by 2 rather than ``2a``, which we reproduce
    so that radii (and heatmaps) match its released models.
    """
    height, width = det_size
    area, perimeter = height * width, height + width
    # (a, b, c) per case; each radius is CenterPoint's (b + sqrt(b^2 - 4ac)) / 2.
    quadratics = (
        (1.0, perimeter, area * (1 - min_overlap) / (1 + min_overlap)),
        (4.0, 2 * perimeter, (1 - min_overlap) * area),
        (4.0 * min_overlap, -2 * min_overlap * perimeter, (min_overlap - 1) * area),
    )
    radii = [(b + math.sqrt(b * b - 4 * a * c)) / 2 for a, b, c in quadratics]
    return min(radii)


def gaussian_2d(radius: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(2r+1, 2r+1) unnormalised Gaussian with peak 1 at the centre; negligible tails set to 0."""
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    return torch.where(g < torch.finfo(dtype).eps * g.max(), torch.zeros_like(g), g)


def draw_heatmap_gaussian(heatmap: torch.Tensor, center: tuple[int, int], radius: int, k: float = 1.0) -> torch.Tensor:
    """Splat a Gaussian of ``radius`` (sigma = diameter / 6) at ``center = (col, row)``, in place.

    ``heatmap`` (H, W) keeps the element-wise maximum of its value and ``k`` times the Gaussian;
    the Gaussian is clipped at the borders. Returns ``heatmap``.
    """
    radius = int(radius)
    diameter = 2 * radius + 1
    gaussian = gaussian_2d(radius, diameter / 6, dtype=heatmap.dtype, device=heatmap.device)
    col, row = int(center[0]), int(center[1])
    height, width = heatmap.shape
    left, right = min(col, radius), min(width - col, radius + 1)
    top, bottom = min(row, radius), min(height - row, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return heatmap
    target = heatmap[row - top:row + bottom, col - left:col + right]
    patch = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    torch.maximum(target, patch * k, out=target)
    return heatmap
