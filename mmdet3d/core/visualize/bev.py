"""A top-down (BEV) canvas over a metric range of the LiDAR frame, drawn with Pillow.

Orientation: +x to the right, +y up (on nuScenes' LIDAR_TOP, whose y axis points forward, the
ego drives up the image). Pixel ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)`` in
continuous pixel coordinates ``col = (x - x_min) / res``, ``row = (y_max - y) / res`` with ``res``
metres per pixel; a point, and a vertex of a drawn line, lands on the pixel ``(floor(col), floor(row))``.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mmdet3d.core.bbox.structures import bev_corners

from .colors import BACKGROUND, EGO, GRID, TEXT, colorize

__all__ = ["BevCanvas", "font", "ego_footprint"]

# the ego's outline in its own frame (x forward from the rear axle, y left), metres: a pointed
# footprint of a 4.1 x 1.8 m car
_EGO_OUTLINE = ((-0.7, -0.9), (2.6, -0.9), (3.4, 0.0), (2.6, 0.9), (-0.7, 0.9))


@functools.lru_cache(maxsize=8)
def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` pixels (a bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one size
        return ImageFont.load_default()


def ego_footprint(lidar2ego: np.ndarray | None) -> np.ndarray:
    """(5, 2) outline of the ego vehicle in the LiDAR frame, from the 4x4 ``lidar2ego`` (identity if None)."""
    ego2lidar = np.linalg.inv(np.asarray(lidar2ego, dtype=np.float64)) if lidar2ego is not None else np.eye(4)
    outline = np.array([[x, y, 0.0, 1.0] for x, y in _EGO_OUTLINE])
    return (outline @ ego2lidar.T)[:, :2]


class BevCanvas:
    """An RGB image of ``bev_range = (x_min, y_min, x_max, y_max)``, ``width`` pixels wide (the
    height follows from the range's aspect: square pixels)."""

    def __init__(self, bev_range: Sequence[float], width: int, background: tuple[int, int, int] = BACKGROUND):
        self.x_min, self.y_min, self.x_max, self.y_max = (float(v) for v in bev_range)
        if not (self.x_max > self.x_min and self.y_max > self.y_min):
            raise ValueError(f"BevCanvas: bev_range must be (x_min, y_min, x_max, y_max) with min < max, got {tuple(bev_range)}")
        self.width = int(width)
        self.res = (self.x_max - self.x_min) / self.width
        self.height = int(round((self.y_max - self.y_min) / self.res))
        self.image = Image.new("RGB", (self.width, self.height), background)
        self.draw = ImageDraw.Draw(self.image)

    # ------------------------------------------------------------------ coordinates
    def to_pixels(self, xy) -> np.ndarray:
        """(..., 2) metres -> (..., 2) continuous pixel coordinates ``(col, row)``."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 0] - self.x_min) / self.res, (self.y_max - xy[..., 1]) / self.res], axis=-1)

    def snapped(self, xy) -> np.ndarray:
        """(..., 2) metres -> (..., 2) pixel ``(col, row)`` each position falls on, as floats for Pillow
        (vector drawing uses the same pixels as ``pixel_indices``; 1e-6 absorbs rounding of exact edges)."""
        return np.floor(self.to_pixels(xy) + 1e-6)

    def pixel_indices(self, xy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P, 2) metres -> integer ``rows``, ``cols`` of the pixels they fall on and the (P,) mask
        of the points on the canvas (rows/cols hold only those)."""
        pixels = self.snapped(xy).astype(np.int64)
        inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < self.width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < self.height)
        return pixels[inside, 1], pixels[inside, 0], inside

    def _paste(self, array: np.ndarray) -> None:
        self.image.paste(Image.fromarray(array))

    # ------------------------------------------------------------------ rasters
    def fill_map(self, grid_map, lo: float | None = None, hi: float | None = None, cmap: str = "heat") -> tuple[float, float]:
        """Paint an (X, Y) map laid over the whole range (cell ``[i, j]`` at ``x_min + (i + 0.5) * cell_x``,
        ``y_min + (j + 0.5) * cell_y``), nearest cell per pixel; ``lo``/``hi`` default to 0 and the
        map's 99th percentile. Returns the ``(lo, hi)`` used."""
        grid_map = grid_map.detach().cpu().numpy() if isinstance(grid_map, torch.Tensor) else np.asarray(grid_map)
        num_x, num_y = grid_map.shape
        lo = 0.0 if lo is None else float(lo)
        hi = float(np.percentile(grid_map, 99)) if hi is None else float(hi)
        hi = hi if hi > lo else lo + max(float(grid_map.max()) - lo, 1e-12)
        centres_x = self.x_min + (np.arange(self.width) + 0.5) * self.res
        centres_y = self.y_max - (np.arange(self.height) + 0.5) * self.res
        ix = np.clip(np.floor((centres_x - self.x_min) / (self.x_max - self.x_min) * num_x).astype(np.int64), 0, num_x - 1)
        iy = np.clip(np.floor((centres_y - self.y_min) / (self.y_max - self.y_min) * num_y).astype(np.int64), 0, num_y - 1)
        values = grid_map[ix[None, :], iy[:, None]]  # (rows, cols): row r is y index iy[r], col c is x index ix[c]
        self._paste(colorize(values, lo, hi, cmap))
        return lo, hi

    def draw_points(self, xyz, lo: float, hi: float, cmap: str = "rainbow") -> int:
        """One pixel per point, coloured by height ``z`` between ``lo`` and ``hi`` (higher points drawn
        last, on top). Returns how many points fell on the canvas."""
        xyz = np.asarray(xyz, dtype=np.float64)
        order = np.argsort(xyz[:, 2], kind="stable")
        rows, cols, inside = self.pixel_indices(xyz[order, :2])
        array = np.array(self.image)
        array[rows, cols] = colorize(xyz[order][inside, 2], lo, hi, cmap)
        self._paste(array)
        return int(inside.sum())

    def draw_grid(self, step: float | None = None, labels: bool = True) -> float:
        """Lines every ``step`` metres (default: a round step giving about ten lines), labelled in
        metres along the left and bottom edges. Returns the step."""
        if step is None:
            raw = (self.x_max - self.x_min) / 10
            magnitude = 10 ** math.floor(math.log10(raw))
            step = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
        small = font(11)
        for value in np.arange(math.ceil(self.x_min / step) * step, self.x_max + 1e-9, step):
            col = (value - self.x_min) / self.res
            self.draw.line([(col, 0), (col, self.height)], fill=GRID, width=1)
            if labels:
                self.draw.text((col + 2, self.height - 14), f"{value:g}", fill=GRID, font=small)
        for value in np.arange(math.ceil(self.y_min / step) * step, self.y_max + 1e-9, step):
            row = (self.y_max - value) / self.res
            self.draw.line([(0, row), (self.width, row)], fill=GRID, width=1)
            if labels:
                self.draw.text((2, row + 1), f"{value:g}", fill=GRID, font=small)
        return float(step)

    # ------------------------------------------------------------------ vectors
    def draw_boxes(self, boxes, colors: Sequence[tuple[int, int, int]], width: int = 2,
                   labels: Sequence[str] | None = None) -> None:
        """(K, >=7) boxes as oriented rectangles with a heading tick from the centre to the front
        edge; ``labels[k]`` (e.g. a score) is written beside box k's front-left corner."""
        boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64))
        if boxes.numel() == 0:
            return
        corners = self.snapped(bev_corners(boxes).numpy())  # (K, 4, 2): front-left, rear-left, rear-right, front-right
        centres = self.snapped(boxes[:, :2].numpy())
        for k, (outline, centre) in enumerate(zip(corners, centres)):
            color = tuple(colors[k])
            points = [tuple(p) for p in outline]
            self.draw.line(points + [points[0]], fill=color, width=width, joint="curve")
            front = (outline[0] + outline[3]) / 2
            self.draw.line([tuple(centre), tuple(front)], fill=color, width=width)
            if labels is not None and labels[k]:
                self.draw.text((outline[0][0] + 2, outline[0][1] - 12), labels[k], fill=color, font=font(11))

    def draw_polygon(self, xy, fill: tuple[int, int, int] | None = None, outline: tuple[int, int, int] | None = None) -> None:
        """A closed polygon given by (V, 2) metric vertices."""
        self.draw.polygon([tuple(p) for p in self.snapped(xy)], fill=fill, outline=outline)

    def draw_ego(self, lidar2ego: np.ndarray | None = None) -> None:
        """The ego vehicle's footprint (pointing forward) from ``lidar2ego``."""
        self.draw_polygon(ego_footprint(lidar2ego), fill=EGO, outline=TEXT)

    def draw_dots(self, xy, color: tuple[int, int, int], radius: float = 1.0) -> None:
        """(P, 2) metric positions as small discs of ``radius`` pixels."""
        for col, row in self.to_pixels(np.asarray(xy, dtype=np.float64).reshape(-1, 2)):
            self.draw.ellipse([col - radius, row - radius, col + radius, row + radius], fill=color)
