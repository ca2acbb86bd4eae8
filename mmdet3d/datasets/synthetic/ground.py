"""The ground plane: a road texture for the cameras, a material map for the LiDAR, a map mask.

The texture covers the scene frame's street at ``GROUND_RES`` metres per pixel, texel (col, row)
at ``x = x_min + col * res``, ``y = y_max - row * res`` (pixel centres on integer coordinates).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .scene import HOUSE_Y

__all__ = ["GroundTexture", "build_ground", "GROUND_INTENSITY", "drivable_mask_png"]

GROUND_RES = 0.1
Y_HALF = 40.0
ASPHALT, MARKING, SIDEWALK, TERRAIN = 0, 1, 2, 3
GROUND_INTENSITY = np.array([9.0, 90.0, 28.0, 14.0], dtype=np.float32)  # LiDAR reflectivity per material


@dataclass
class GroundTexture:
    rgb: np.ndarray  # (rows, cols, 3) uint8, already shaded by the sun
    material: np.ndarray  # (rows, cols) uint8
    x_min: float
    y_max: float
    res: float = GROUND_RES

    def texel_to_scene(self) -> np.ndarray:
        """(3, 3) homogeneous map (col, row, 1) -> (x, y, 1) in the scene frame."""
        r = self.res
        return np.array([[r, 0.0, self.x_min], [0.0, -r, self.y_max], [0.0, 0.0, 1.0]])

    def material_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Material id at scene points (x, y); terrain outside the texture."""
        col = np.rint((x - self.x_min) / self.res).astype(np.int64)
        row = np.rint((self.y_max - y) / self.res).astype(np.int64)
        rows, cols = self.material.shape
        inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
        out = np.full(x.shape, TERRAIN, dtype=np.uint8)
        out[inside] = self.material[row[inside], col[inside]]
        return out


def _smooth_noise(rng, shape, cell, amplitude):
    """Low-frequency noise: a coarse random grid upsampled with cubic interpolation."""
    coarse = rng.normal(0.0, amplitude, size=(shape[0] // cell + 2, shape[1] // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def build_ground(rng: np.random.Generator, x_range: tuple[float, float], sun: np.ndarray) -> GroundTexture:
    x_min, x_max = x_range
    cols, rows = int((x_max - x_min) / GROUND_RES) + 1, int(2 * Y_HALF / GROUND_RES) + 1
    y = Y_HALF - np.arange(rows, dtype=np.float32) * GROUND_RES  # (rows,)
    x = x_min + np.arange(cols, dtype=np.float32) * GROUND_RES  # (cols,)
    ay = np.abs(y)[:, None]
    material = np.full((rows, cols), TERRAIN, dtype=np.uint8)
    material[np.broadcast_to(ay < 11.9, material.shape)] = ASPHALT
    material[np.broadcast_to((ay >= 11.9) & (ay < HOUSE_Y), material.shape)] = SIDEWALK

    base = np.empty((rows, cols, 3), dtype=np.float32)
    colours = {ASPHALT: (88, 88, 92), SIDEWALK: (165, 160, 150), TERRAIN: (95, 110, 70)}
    for m, col in colours.items():
        base[material == m] = col
    base[np.broadcast_to((ay >= 7.0) & (ay < 8.5), material.shape)] = (120, 80, 75)  # bike lanes
    base[np.broadcast_to((ay >= 8.5) & (ay < 11.9), material.shape)] = (75, 75, 78)  # parking
    # Sidewalk slabs: darker joints every 1.5 m.
    joints = ((np.abs(x)[None, :] % 1.5) < 0.05) | ((ay % 1.5) < 0.05)
    base[(material == SIDEWALK) & joints] *= 0.8
    noise = _smooth_noise(rng, (rows, cols), 40, 8.0) + rng.normal(0, 4.0, size=(rows, cols)).astype(np.float32)
    base += noise[..., None]

    def paint(mask, colour=(235, 235, 230)):
        mask = np.broadcast_to(mask, material.shape)
        base[mask] = colour
        material[mask] = MARKING

    dashes = ((x - x_min) % 9.0) < 3.0  # 3 m dashes, 6 m gaps
    for centre, width, dashed in ((0.1, 0.12, False), (3.5, 0.12, True), (7.0, 0.15, False), (8.5, 0.1, False)):
        band = np.abs(ay - centre) < width / 2
        paint(band & (dashes[None, :] if dashed else True))
    # A zebra crossing somewhere along the street.
    xc = rng.uniform(x_min + 60, x_max - 60)
    zebra = (np.abs(x - xc) < 2.0)[None, :] & (ay < 8.5) & (((y[:, None] + 20.0) % 1.0) < 0.5)
    paint(zebra)

    lambert = 0.45 + 0.55 * max(float(sun[2]), 0.0)
    rgb = np.clip(base * lambert, 0, 255).astype(np.uint8)
    return GroundTexture(rgb=rgb, material=material, x_min=float(x_min), y_max=float(Y_HALF))


def drivable_mask_png(scene2global: np.ndarray, x_range, half_width: float = 11.9, res: float = 0.1) -> np.ndarray:
    """Binary drivable-area mask in the global frame as the devkit's MapMask reads it.

    Pixel (col, row) covers global ``(col * res, (rows - row) * res)``; 255 on the street.
    """
    corners = np.array([[x_range[0], -half_width, 1], [x_range[1], -half_width, 1],
                        [x_range[1], half_width, 1], [x_range[0], half_width, 1]]) @ scene2global.T
    width = int(np.ceil(corners[:, 0].max() / res)) + 10
    height = int(np.ceil(corners[:, 1].max() / res)) + 10
    mask = np.zeros((height, width), dtype=np.uint8)
    pix = np.stack([corners[:, 0] / res, height - corners[:, 1] / res], axis=1)
    cv2.fillConvexPoly(mask, np.round(pix).astype(np.int32), 255)
    return mask
