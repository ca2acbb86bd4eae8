"""Pinhole camera renderer: sky, a homography-warped ground texture and z-buffered box faces.

Boxes are ray cast (``raycast.ray_box``) only inside their projected bounding rectangle, so the
cost is the objects' screen area rather than pixels x boxes. Faces get flat Lambertian shading
from the scene's sun direction; distance haze blends towards the horizon colour. Pixel (col, row)
looks along ``K^-1 [col, row, 1]`` (pixel centres on integer coordinates, as OpenCV).
"""
from __future__ import annotations

import cv2
import numpy as np

from .ground import GroundTexture
from .raycast import UNIT_CORNERS, box_corners_np, face_normals, ray_box

__all__ = ["render_camera", "NEAR_PLANE"]

NEAR_PLANE = 0.1
MAX_DEPTH = 200.0
AMBIENT = 0.4
SKY_HORIZON = np.array([205, 218, 232], dtype=np.float32)
SKY_ZENITH = np.array([80, 130, 205], dtype=np.float32)
_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8)
                   if np.abs(UNIT_CORNERS[a] - UNIT_CORNERS[b]).sum() == 2])  # (12, 2) of ``box_corners_np``


def _screen_windows(corners_cam, K, width, height):
    """(M, 8, 3) corners in the camera frame -> (M, 4) int pixel windows [u0, u1) x [v0, v1).

    The part of each box in front of the near plane is the convex hull of its corners there and
    of its edges' crossings of the plane, so projecting those points bounds the box on screen.
    """
    z = corners_cam[..., 2]
    a, b = corners_cam[:, _EDGES[:, 0]], corners_cam[:, _EDGES[:, 1]]  # (M, 12, 3)
    za, zb = a[..., 2], b[..., 2]
    crosses = (za - NEAR_PLANE) * (zb - NEAR_PLANE) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (NEAR_PLANE - za) / (zb - za)
    crossing = a + w[..., None] * (b - a)
    points = np.concatenate([corners_cam, crossing], axis=1)
    valid = np.concatenate([z >= NEAR_PLANE, crosses], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * points[..., 0] / points[..., 2] + K[0, 2]
        v = K[1, 1] * points[..., 1] / points[..., 2] + K[1, 2]
    big = 1e9
    u0 = np.where(valid, u, big).min(1)
    u1 = np.where(valid, u, -big).max(1)
    v0 = np.where(valid, v, big).min(1)
    v1 = np.where(valid, v, -big).max(1)
    win = np.stack([np.floor(u0), np.ceil(u1) + 1, np.floor(v0), np.ceil(v1) + 1], axis=1)
    win = np.clip(win, [0, 0, 0, 0], [width, width, height, height]).astype(np.int64)
    win[~valid.any(1)] = 0
    return win


def _background(R: np.ndarray, height_above_ground: float, K: np.ndarray, image_size: tuple[int, int]):
    """Per-pixel quantities that only depend on the camera's pitch, roll and height, not on the
    ego's heading or position: ``depth`` (H, W) of the ground (inf for sky), ``keep`` (H, W, 1)
    and ``add`` (H, W, 3) with ``ground_rgb * keep + add`` = the hazed ground or the sky."""
    key = (R[2].round(9).tobytes(), round(float(height_above_ground), 9), K.round(9).tobytes(), tuple(image_size))
    if key in _BACKGROUND_CACHE:
        return _BACKGROUND_CACHE[key]
    width, height = image_size
    a = ((np.arange(width) - K[0, 2]) / K[0, 0])[None, :]
    b = ((np.arange(height) - K[1, 2]) / K[1, 1])[:, None]
    dz = (R[2, 0] * a + R[2, 1] * b + R[2, 2]).astype(np.float32)
    with np.errstate(divide="ignore"):
        depth = np.where(dz < 0, np.float32(height_above_ground) / -dz, np.float32(np.inf)).astype(np.float32)
    depth[depth > MAX_DEPTH * 5] = np.inf
    ground = np.isfinite(depth)[..., None]
    haze = _haze(np.where(ground[..., 0], depth, 0.0))[..., None]
    norm = np.sqrt((R[0, 0] * a + R[0, 1] * b + R[0, 2]) ** 2 + (R[1, 0] * a + R[1, 1] * b + R[1, 2]) ** 2 + dz ** 2)
    elevation = np.clip(dz / norm, 0.0, 1.0)[..., None]
    sky = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * np.sqrt(elevation)
    keep = np.where(ground, 1.0 - haze, 0.0).astype(np.float32)
    add = np.where(ground, SKY_HORIZON * haze, sky).astype(np.float32)
    if len(_BACKGROUND_CACHE) > 64:
        _BACKGROUND_CACHE.clear()
    _BACKGROUND_CACHE[key] = (depth, keep, add)
    return depth, keep, add


def _haze(depth):
    """Blend weight towards the horizon colour at camera depth ``depth``."""
    return 1.0 - np.exp(depth / np.float32(-400.0))


_BACKGROUND_CACHE: dict = {}


def render_camera(boxes: dict, ground: GroundTexture, sun: np.ndarray, cam2scene: np.ndarray, K: np.ndarray,
                  image_size: tuple[int, int], num_objects: int):
    """Render one image.

    boxes: ``SceneLayout.boxes_at`` output; cam2scene: (4, 4) camera pose in the scene frame;
    K: (3, 3); image_size: (W, H). Returns ``rgb`` (H, W, 3) uint8, ``owner`` (H, W) int32 object
    index per pixel (-1 ground, sky or clutter), ``depth`` (H, W) float32 camera z (inf for sky),
    ``visible_px`` and ``unoccluded_px`` (num_objects,) pixel counts of each object with and
    without occlusion by other boxes.
    """
    width, height = image_size
    R, origin = cam2scene[:3, :3], cam2scene[:3, 3]
    ground_depth, keep_ground, add_sky = _background(R, origin[2], K, image_size)
    depth = ground_depth.copy()
    a = ((np.arange(width, dtype=np.float32) - K[0, 2]) / K[0, 0])[None, :]
    b = ((np.arange(height, dtype=np.float32) - K[1, 2]) / K[1, 1])[:, None]
    R32 = R.astype(np.float32)

    Rt = R.T
    img_from_xy = K @ np.column_stack([Rt[:, 0], Rt[:, 1], -Rt @ origin])
    tex_to_img = img_from_xy @ ground.texel_to_scene()
    img = cv2.warpPerspective(ground.rgb, np.linalg.inv(tex_to_img), (width, height),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    img = img * keep_ground + add_sky
    owner_map = np.full((height, width), -1, dtype=np.int32)
    visible_px = np.zeros(num_objects, dtype=np.int64)
    unoccluded_px = np.zeros(num_objects, dtype=np.int64)

    center_cam = (boxes["center"] - origin) @ R
    radius = np.linalg.norm(boxes["half"], axis=1)
    near_z = center_cam[:, 2] - radius  # lower bound of the depth of any point of the box
    keep = np.flatnonzero((center_cam[:, 2] > -radius) & (np.linalg.norm(center_cam, axis=1) < MAX_DEPTH + radius))
    keep = keep[np.lexsort((near_z[keep], boxes["owner"][keep]))]  # parts of one object together
    corners = box_corners_np(boxes["center"][keep], boxes["half"][keep], boxes["yaw"][keep])
    windows = _screen_windows((corners - origin) @ R, K, width, height)
    scratch = np.full((height, width), -1, dtype=np.int32)
    union = None
    for n, (idx, (u0, u1, v0, v1)) in enumerate(zip(keep, windows)):
        owner = int(boxes["owner"][idx])
        track = owner >= 0  # objects need their unoccluded area even where hidden
        if u1 > u0 and v1 > v0:
            win = (slice(v0, v1), slice(u0, u1))
            current = depth[win]
            if track or current.max() >= near_z[idx]:
                aw, bw = a[:, u0:u1], b[v0:v1]
                rays = [R32[i, 0] * aw + R32[i, 1] * bw + R32[i, 2] for i in range(3)]
                t, face = ray_box(origin, *rays, boxes["center"][idx], boxes["half"][idx], boxes["yaw"][idx])
                front = t < current
                if front.any():
                    shade = AMBIENT + (1 - AMBIENT) * np.clip(face_normals(boxes["yaw"][idx]) @ sun, 0.0, 1.0)
                    colors = (boxes["color"][idx][None, :] * shade[:, None]).astype(np.float32)  # (6, 3)
                    t_front = t[front]
                    current[front] = t_front
                    rgb = colors[face[front]]
                    img[win][front] = rgb + (SKY_HORIZON - rgb) * _haze(t_front)[:, None]
                    owner_map[win][front] = owner
                if track:
                    scratch[win][np.isfinite(t)] = owner
                    union = (u0, u1, v0, v1) if union is None else (
                        min(union[0], u0), max(union[1], u1), min(union[2], v0), max(union[3], v1))
        last_of_owner = n + 1 == len(keep) or int(boxes["owner"][keep[n + 1]]) != owner
        if track and last_of_owner and union is not None:
            u0, u1, v0, v1 = union
            unoccluded_px[owner] = np.count_nonzero(scratch[v0:v1, u0:u1] == owner)
            union = None
    objects = owner_map >= 0
    visible_px += np.bincount(owner_map[objects], minlength=num_objects)
    img += 0.5
    return np.clip(img, 0, 255, out=img).astype(np.uint8), owner_map, depth, visible_px, unoccluded_px
