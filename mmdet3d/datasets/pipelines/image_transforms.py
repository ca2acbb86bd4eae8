"""Image-plane augmentation (``ImageAug3D``) and normalisation (``ImageNormalize``).

Pixel convention (OpenCV and nuScenes intrinsics): ``(u, v)`` with ``(0, 0)`` the centre of the
top-left pixel, ``u`` to the right, ``v`` down. ``lidar2image @ [x, y, z, 1]`` gives
``[u*d, v*d, d, 1]`` with ``d`` the camera-frame depth; after dividing the first two entries by
``d``, ``img_aug_matrix @ [u, v, d, 1] = [u', v', d, 1]`` gives the pixel ``(u', v')`` of the
augmented image. The 2x2 rotation/scale sits in the top-left, the translation in column 3 rows
0-1, and row 2 passes the depth through unchanged (BEVFusion's layout).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from mmdet3d.datasets.builder import PIPELINES

__all__ = ["ImageAug3D", "ImageNormalize", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _crop(img: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """``(H, W, 3)`` -> ``(height, width, 3)`` window at ``(x0, y0)``; outside the image is black."""
    out = np.zeros((height, width, img.shape[2]), dtype=img.dtype)
    src_x0, src_y0 = max(x0, 0), max(y0, 0)
    src_x1, src_y1 = min(x0 + width, img.shape[1]), min(y0 + height, img.shape[0])
    if src_x1 > src_x0 and src_y1 > src_y0:
        out[src_y0 - y0:src_y1 - y0, src_x0 - x0:src_x1 - x0] = img[src_y0:src_y1, src_x0:src_x1]
    return out


def _invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 3x3 2D affine map ``[[A, t], [0, 1]]`` in closed form (no LAPACK call: BLAS
    threads contend badly inside DataLoader workers)."""
    (a, b), (c, d) = m[:2, :2]
    inv_a = np.array([[d, -b], [-c, a]]) / (a * d - b * c)
    out = np.eye(3)
    out[:2, :2] = inv_a
    out[:2, 2] = -inv_a @ m[:2, 2]
    return out


@PIPELINES.register_module()
class ImageAug3D:
    """Per camera: resize by ``r``, crop a ``final_dim`` window, optionally flip left-right, then
    rotate by ``a`` degrees counter-clockwise (as seen) about the crop centre (BEVFusion order).

    Training: ``r ~ U(resize_lim)``; crop bottom at ``(1 - U(bot_pct_lim)) * H_resized``; crop left
    ``~ U(0, W_resized - W_final)``; flip with probability 0.5 if ``rand_flip``; ``a ~ U(rot_lim)``.
    Test (``is_train=False``): ``r = mean(resize_lim)``, crop centred horizontally with its bottom
    at ``(1 - mean(bot_pct_lim)) * H_resized``, no flip, no rotation.

    ``img`` list of N ``(H, W, 3)`` uint8 -> list of N ``(H_final, W_final, 3)`` uint8;
    ``img_aug_matrix`` (N, 4, 4) float32 is composed with any existing one (module docstring).
    """

    def __init__(
        self,
        final_dim: Sequence[int],
        resize_lim: Sequence[float],
        bot_pct_lim: Sequence[float] = (0.0, 0.0),
        rot_lim: Sequence[float] = (0.0, 0.0),
        rand_flip: bool = False,
        is_train: bool = True,
    ):
        if len(final_dim) != 2:
            raise ValueError(f"ImageAug3D: final_dim must be (H, W), got {final_dim}")
        self.final_dim = (int(final_dim[0]), int(final_dim[1]))
        self.resize_lim = tuple(float(v) for v in resize_lim)
        self.bot_pct_lim = tuple(float(v) for v in bot_pct_lim)
        self.rot_lim = tuple(float(v) for v in rot_lim)
        self.rand_flip = rand_flip
        self.is_train = is_train

    def sample_augmentation(self, height: int, width: int) -> tuple[float, tuple[int, int], tuple[int, int], bool, float]:
        """-> ``(resize, (W_resized, H_resized), (crop_x0, crop_y0), flip, rotate_degrees)``."""
        f_h, f_w = self.final_dim
        if self.is_train:
            resize = np.random.uniform(*self.resize_lim)
            bot_pct = np.random.uniform(*self.bot_pct_lim)
        else:
            resize, bot_pct = float(np.mean(self.resize_lim)), float(np.mean(self.bot_pct_lim))
        new_w, new_h = int(width * resize), int(height * resize)
        crop_y0 = int((1 - bot_pct) * new_h) - f_h
        if self.is_train:
            crop_x0 = int(np.random.uniform(0, max(0, new_w - f_w)))
            flip = bool(self.rand_flip and np.random.rand() < 0.5)
            rotate = float(np.random.uniform(*self.rot_lim))
        else:
            crop_x0, flip, rotate = int(max(0, new_w - f_w) / 2), False, 0.0
        return resize, (new_w, new_h), (crop_x0, crop_y0), flip, rotate

    def post_resize_matrix(self, crop: tuple[int, int], flip: bool, rotate: float) -> np.ndarray:
        """3x3 homogeneous map of resized-image pixels to final pixels (crop, flip, rotate)."""
        f_h, f_w = self.final_dim
        m = np.array([[1.0, 0.0, -crop[0]], [0.0, 1.0, -crop[1]], [0.0, 0.0, 1.0]])
        if flip:
            m = np.array([[-1.0, 0.0, f_w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
        if rotate != 0.0:
            theta = math.radians(rotate)
            c, s = math.cos(theta), math.sin(theta)
            centre = np.array([(f_w - 1) / 2, (f_h - 1) / 2])
            rot = np.array([[c, s], [-s, c]])  # counter-clockwise as seen, with v pointing down
            r = np.eye(3)
            r[:2, :2] = rot
            r[:2, 2] = centre - rot @ centre
            m = r @ m
        return m

    def img_transform(self, img: np.ndarray, resize_dims, crop, flip: bool, rotate: float) -> tuple[np.ndarray, np.ndarray]:
        """One ``(H, W, 3)`` image -> (augmented image, 3x3 pixel map)."""
        height, width = img.shape[:2]
        new_w, new_h = resize_dims
        resized = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BILINEAR))
        # Resizing maps pixel centres: u' + 0.5 = (u + 0.5) * new_w / width.
        sx, sy = new_w / width, new_h / height
        resize_m = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        post = self.post_resize_matrix(crop, flip, rotate)
        f_h, f_w = self.final_dim
        if rotate == 0.0:
            out = _crop(resized, crop[0], crop[1], f_w, f_h)
            if flip:
                out = np.ascontiguousarray(out[:, ::-1])
        else:
            # PIL's affine map works on pixel-edge coordinates (centre of pixel 0 at 0.5): shift to
            # our centre convention, apply the inverse map, shift back.
            to_edges = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
            inv = to_edges @ _invert_affine(post) @ _invert_affine(to_edges)
            warped = Image.fromarray(resized).transform(
                (f_w, f_h), Image.Transform.AFFINE, tuple(inv[:2].reshape(-1)), resample=Image.Resampling.BILINEAR
            )
            out = np.asarray(warped)
        return out, post @ resize_m

    def __call__(self, results: dict) -> dict:
        images = results["img"]
        new_images, matrices = [], []
        for img in images:
            img = np.asarray(img)
            resize, resize_dims, crop, flip, rotate = self.sample_augmentation(*img.shape[:2])
            out, m3 = self.img_transform(img, resize_dims, crop, flip, rotate)
            m4 = np.eye(4)
            m4[:2, :2] = m3[:2, :2]
            m4[:2, 3] = m3[:2, 2]
            new_images.append(out)
            matrices.append(m4)
        transform = np.stack(matrices) if matrices else np.zeros((0, 4, 4))
        previous = np.asarray(results.get("img_aug_matrix", np.broadcast_to(np.eye(4), transform.shape)), dtype=np.float64)
        results["img"] = new_images
        results["img_aug_matrix"] = (transform @ previous).astype(np.float32)
        results["img_shape"] = [im.shape[:2] for im in new_images]
        return results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(final_dim={self.final_dim}, resize_lim={self.resize_lim}, bot_pct_lim={self.bot_pct_lim}, "
            f"rot_lim={self.rot_lim}, rand_flip={self.rand_flip}, is_train={self.is_train})"
        )


@PIPELINES.register_module()
class ImageNormalize:
    """``img`` list of N ``(H, W, 3)`` uint8 RGB -> float32 tensor ``(N, 3, H, W)``: ``(x / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"ImageNormalize: mean and std need 3 values with std > 0, got mean={mean}, std={std}")
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def __call__(self, results: dict) -> dict:
        images = [np.asarray(im) for im in results["img"]]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise ValueError(f"ImageNormalize: camera images differ in shape {sorted(shapes)}; resize them first (ImageAug3D)")
        # Permute the uint8 stack first, then normalise in place: ~10x faster than on floats.
        stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float()  # (N, H, W, 3) -> (N, 3, H, W)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std).view(1, 3, 1, 1) * 255.0)
        results["img"] = stacked.sub_(mean).mul_(inv_std)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"
