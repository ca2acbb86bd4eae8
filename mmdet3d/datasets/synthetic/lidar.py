"""A spinning 32-beam LiDAR (nuScenes' Velodyne HDL-32E) ray cast against the ground and boxes.

Each box is tested only against the rays inside its angular window (azimuth from its corners,
elevation bounded through its bounding sphere), so a sweep costs about one test per ray.
Points come back in the sensor frame as ``(x, y, z, intensity, ring)`` float32, ring = beam index
from the lowest beam up.
"""
from __future__ import annotations

import numpy as np

from .ground import GROUND_INTENSITY, GroundTexture
from .raycast import box_corners_np, ray_box

__all__ = ["SpinningLidar"]


class SpinningLidar:
    """Beam layout and ray casting of one sensor.

    Args:
        num_beams: lasers, evenly spaced in elevation from ``elevation_min`` to ``elevation_max`` (deg).
        num_azimuth: firings per revolution; azimuth ``j`` looks at ``2 * pi * j / num_azimuth``
            from the sensor's +x axis, counter-clockwise.
        max_range, min_range: returns outside are dropped (m).
        range_noise: std of Gaussian range noise (m). dropout: fraction of returns lost at random.
    """

    def __init__(self, num_beams: int = 32, elevation_min: float = -30.67, elevation_max: float = 10.67,
                 num_azimuth: int = 1084, max_range: float = 80.0, min_range: float = 1.0,
                 range_noise: float = 0.01, dropout: float = 0.02):
        self.num_beams, self.num_azimuth = num_beams, num_azimuth
        self.max_range, self.min_range = max_range, min_range
        self.range_noise, self.dropout = range_noise, dropout
        self.elevation = np.deg2rad(np.linspace(elevation_min, elevation_max, num_beams))
        self.elevation_step = (self.elevation[-1] - self.elevation[0]) / max(num_beams - 1, 1)
        self.azimuth_step = 2 * np.pi / num_azimuth
        azimuth = np.arange(num_azimuth) * self.azimuth_step
        ce = np.cos(self.elevation)[:, None]
        # (num_beams, num_azimuth, 3) unit directions in the sensor frame.
        self.directions = np.stack([ce * np.cos(azimuth)[None], ce * np.sin(azimuth)[None],
                                    np.broadcast_to(np.sin(self.elevation)[:, None], (num_beams, num_azimuth))], -1)

    def _windows(self, centers_s, half, corners_s):
        """Angular windows of the rays that can hit each box (sensor-frame geometry).

        (M, 3) centres, (M, 3) half sizes, (M, 8, 3) corners -> (M,) beam range [b0, b1) and
        azimuth range [i0, i1) with 0 <= i0 < num_azimuth and i1 - i0 <= num_azimuth (it may
        pass num_azimuth: the window then wraps around).
        """
        radius = np.linalg.norm(half, axis=1)
        rho_c = np.hypot(centers_s[:, 0], centers_s[:, 1])
        rho_min, rho_max = np.maximum(rho_c - radius, 0.0), rho_c + radius
        z_top, z_bot = corners_s[..., 2].max(1), corners_s[..., 2].min(1)
        # Elevation bounds over the bounding sphere's horizontal extent (conservative).
        up = np.arctan2(z_top, np.where(z_top > 0, rho_min, rho_max))
        down = np.arctan2(z_bot, np.where(z_bot > 0, rho_max, rho_min))
        b0 = np.clip(np.floor((down - self.elevation[0]) / self.elevation_step), 0, self.num_beams).astype(np.int64)
        b1 = np.clip(np.ceil((up - self.elevation[0]) / self.elevation_step) + 1, 0, self.num_beams).astype(np.int64)
        # Azimuth extent of a convex body seen from outside is reached at its corners.
        az_c = np.arctan2(centers_s[:, 1], centers_s[:, 0])
        rel = np.angle(np.exp(1j * (np.arctan2(corners_s[..., 1], corners_s[..., 0]) - az_c[:, None])))
        i0 = np.floor((az_c + rel.min(1)) / self.azimuth_step).astype(np.int64) - 1
        i1 = np.ceil((az_c + rel.max(1)) / self.azimuth_step).astype(np.int64) + 2
        n = self.num_azimuth
        full = (i1 - i0 >= n) | (rho_min == 0.0)
        shift = i0 - np.mod(i0, n)
        i0, i1 = np.where(full, 0, i0 - shift), np.where(full, n, i1 - shift)
        return b0, b1, i0, i1

    def cast(self, boxes: dict, ground: GroundTexture, sensor2scene: np.ndarray, rng: np.random.Generator,
             ground_z: float = 0.0):
        """One sweep from the pose ``sensor2scene`` (4, 4).

        Returns ``points`` (P, 5) float32 sensor-frame ``x, y, z, intensity, ring`` and ``owner``
        (P,) object index of each point (-1 ground or clutter).
        """
        R, origin = sensor2scene[:3, :3], sensor2scene[:3, 3]
        d = self.directions @ R.T  # (B, A, 3) scene-frame unit directions
        dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
        with np.errstate(divide="ignore"):
            ranges = np.where(dz < 0, (ground_z - origin[2]) / dz, np.inf)
        hit_ground = np.isfinite(ranges) & (ranges < self.max_range)
        intensity = np.zeros(ranges.shape, dtype=np.float32)
        gx, gy = origin[0] + ranges[hit_ground] * dx[hit_ground], origin[1] + ranges[hit_ground] * dy[hit_ground]
        intensity[hit_ground] = GROUND_INTENSITY[ground.material_at(gx, gy)]
        owner = np.full(ranges.shape, -1, dtype=np.int64)

        offset = boxes["center"] - origin
        radius = np.linalg.norm(boxes["half"], axis=1)
        distance = np.linalg.norm(offset, axis=1) - radius  # lower bound of any hit's range
        keep = np.flatnonzero(distance < self.max_range)
        keep = keep[np.argsort(distance[keep], kind="stable")]  # near first: far boxes are often hidden
        corners_s = (box_corners_np(boxes["center"][keep], boxes["half"][keep], boxes["yaw"][keep]) - origin) @ R
        b0, b1, i0, i1 = self._windows(offset[keep] @ R, boxes["half"][keep], corners_s)
        n = self.num_azimuth
        for k, idx in enumerate(keep):
            if b1[k] <= b0[k]:
                continue
            spans = [(i0[k], i1[k])] if i1[k] <= n else [(i0[k], n), (0, i1[k] - n)]
            for a0, a1 in spans:
                win = (slice(b0[k], b1[k]), slice(a0, a1))
                current = ranges[win]
                if current.max() < distance[idx]:
                    continue  # every ray of the window already stops before this box
                t, _ = ray_box(origin, dx[win], dy[win], dz[win], boxes["center"][idx], boxes["half"][idx],
                               boxes["yaw"][idx], with_face=False)
                closer = t < current
                if closer.any():
                    current[closer] = t[closer]
                    intensity[win][closer] = boxes["intensity"][idx]
                    owner[win][closer] = boxes["owner"][idx]

        valid = (ranges >= self.min_range) & (ranges < self.max_range) & (rng.random(ranges.shape) >= self.dropout)
        r = ranges[valid] + rng.normal(0.0, self.range_noise, size=int(valid.sum()))
        ring = np.broadcast_to(np.arange(self.num_beams)[:, None], valid.shape)[valid]
        inten = np.clip(intensity[valid] + rng.normal(0.0, 2.0, size=r.shape), 0.0, 255.0)
        xyz = self.directions[valid] * r[:, None]
        points = np.column_stack([xyz, inten, ring]).astype(np.float32)
        return points, owner[valid]
