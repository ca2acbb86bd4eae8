"""3D box wireframes in camera images, clipped at the image plane, and the six-camera layout.

A box edge is clipped in 3D against the plane ``d = near`` in front of the camera (``d`` the
camera-frame depth, row 2 of ``lidar2image``) before it is projected: a corner behind the camera
has no image point (dividing by a negative depth would mirror it through the image centre), so
the edge is cut where it crosses the plane, and an edge wholly behind is dropped. The projected
segments are then clipped to the image rectangle.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mmdet3d.core.bbox.structures import box_corners
from mmdet3d.core.projection import project_points

from .bev import font
from .colors import TEXT

__all__ = ["BOX_EDGES", "NEAR_PLANE", "NUSCENES_LAYOUT", "clip_segments_to_depth", "clip_segments_to_image",
           "project_box_edges", "draw_wireframes", "camera_layout", "compose_cameras"]

# corner indices of box_corners' order (bottom face, then top face): bottom, top, vertical edges
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
NEAR_PLANE = 0.1  # metres in front of the camera
# (row, column) of each nuScenes camera: front row FL, F, FR; back row BL, B, BR
NUSCENES_LAYOUT = {"CAM_FRONT_LEFT": (0, 0), "CAM_FRONT": (0, 1), "CAM_FRONT_RIGHT": (0, 2),
                   "CAM_BACK_LEFT": (1, 0), "CAM_BACK": (1, 1), "CAM_BACK_RIGHT": (1, 2)}


def clip_segments_to_depth(start: np.ndarray, end: np.ndarray, depth_start: np.ndarray, depth_end: np.ndarray,
                           near: float = NEAR_PLANE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E, 3) segment ends with their (E,) depths -> the parts with depth >= ``near``: clipped
    ends (E, 3) x2 and the (E,) mask of segments with such a part. Depth is linear along a segment,
    so the crossing is at ``t = (near - d0) / (d1 - d0)``."""
    start, end = np.array(start, dtype=np.float64), np.array(end, dtype=np.float64)
    d0, d1 = np.asarray(depth_start, dtype=np.float64), np.asarray(depth_end, dtype=np.float64)
    front0, front1 = d0 >= near, d1 >= near
    keep = front0 | front1
    crossing = keep & (front0 != front1)
    t = np.where(crossing, (near - d0) / np.where(crossing, d1 - d0, 1.0), 0.0)[:, None]
    point = start + t * (end - start)
    start = np.where((crossing & ~front0)[:, None], point, start)
    end = np.where((crossing & ~front1)[:, None], point, end)
    return start, end, keep


def clip_segments_to_image(segments: np.ndarray, width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """(E, 2, 2) pixel segments -> the parts inside ``[0, width] x [0, height]`` (Liang-Barsky)
    and the (E,) mask of segments with such a part."""
    p0, p1 = segments[:, 0].astype(np.float64), segments[:, 1].astype(np.float64)
    delta = p1 - p0
    t0, t1 = np.zeros(len(segments)), np.ones(len(segments))
    keep = np.ones(len(segments), dtype=bool)
    for axis, limit in ((0, width), (1, height)):
        for p, q in ((-delta[:, axis], p0[:, axis]), (delta[:, axis], limit - p0[:, axis])):
            parallel = p == 0
            keep &= ~(parallel & (q < 0))
            ratio = np.where(parallel, 0.0, q / np.where(parallel, 1.0, p))
            t0 = np.where(~parallel & (p < 0), np.maximum(t0, ratio), t0)
            t1 = np.where(~parallel & (p > 0), np.minimum(t1, ratio), t1)
    keep &= t0 <= t1
    clipped = np.stack([p0 + t0[:, None] * delta, p0 + t1[:, None] * delta], axis=1)
    return clipped, keep


def project_box_edges(boxes, lidar2image: np.ndarray, image_size: tuple[int, int],
                      near: float = NEAR_PLANE) -> list[np.ndarray]:
    """(K, >=7) LiDAR-frame boxes, one camera's (4, 4) ``lidar2image``, its ``(H, W)`` -> per box an
    (E_k, 2, 2) array of visible pixel segments ``[[u0, v0], [u1, v1]]`` (E_k = 0: not seen)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return []
    corners = box_corners(boxes.reshape(len(boxes), -1)).numpy()  # (K, 8, 3)
    edges = np.asarray(BOX_EDGES)
    start, end = corners[:, edges[:, 0]].reshape(-1, 3), corners[:, edges[:, 1]].reshape(-1, 3)  # (K*12, 3)
    camera = np.asarray(lidar2image, dtype=np.float64)[None]
    identity = np.eye(4)[None]
    depth_start, depth_end = project_points(start, camera, identity)[0, :, 2], project_points(end, camera, identity)[0, :, 2]
    start, end, in_front = clip_segments_to_depth(start, end, depth_start, depth_end, near)
    pixels = np.stack([project_points(start, camera, identity)[0, :, :2], project_points(end, camera, identity)[0, :, :2]], axis=1)
    height, width = image_size
    pixels, on_image = clip_segments_to_image(pixels, width, height)
    visible = (in_front & on_image).reshape(len(boxes), len(edges))
    pixels = pixels.reshape(len(boxes), len(edges), 2, 2)
    return [pixels[k][visible[k]] for k in range(len(boxes))]


def draw_wireframes(image: Image.Image, segments: Sequence[np.ndarray], colors: Sequence[tuple[int, int, int]],
                    width: int = 2, scale: float = 1.0) -> None:
    """Draw each box's (E, 2, 2) pixel segments (of the original image, times ``scale``) in place."""
    draw = ImageDraw.Draw(image)
    for box_segments, color in zip(segments, colors):
        for (u0, v0), (u1, v1) in box_segments * scale:
            draw.line([(u0, v0), (u1, v1)], fill=tuple(color), width=width)


def camera_layout(names: Sequence[str]) -> list[tuple[int, int]]:
    """``(row, column)`` of each camera in a 3-column grid: the nuScenes cameras in their places
    (``NUSCENES_LAYOUT``), other names in the free cells in order."""
    taken = {NUSCENES_LAYOUT[n] for n in names if n in NUSCENES_LAYOUT}
    free = (divmod(i, 3) for i in range(3 * (len(names) + 2)) if divmod(i, 3) not in taken)
    return [NUSCENES_LAYOUT[n] if n in NUSCENES_LAYOUT else next(free) for n in names]


def compose_cameras(tiles: Mapping[str, Image.Image], tile_size: tuple[int, int]) -> Image.Image:
    """Camera name -> tile (``tile_size = (W, H)``) -> one image of 3 columns and as many rows as
    the layout needs (2 for the six nuScenes cameras), each tile labelled with its camera name."""
    names = list(tiles)
    places = camera_layout(names)
    rows = max(r for r, _ in places) + 1
    tile_w, tile_h = tile_size
    canvas = Image.new("RGB", (3 * tile_w, rows * tile_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for name, (row, col) in zip(names, places):
        canvas.paste(tiles[name].resize((tile_w, tile_h)) if tiles[name].size != (tile_w, tile_h) else tiles[name],
                     (col * tile_w, row * tile_h))
        x, y = col * tile_w + 4, row * tile_h + 3
        draw.rectangle([x - 2, y - 1, x + 7 * len(name) + 4, y + 15], fill=(0, 0, 0))
        draw.text((x, y), name, fill=TEXT, font=font(12))
    return canvas
