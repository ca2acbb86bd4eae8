"""Front/back cues of the generated objects, as the LiDAR sees them.

Statistic: a box's keyframe LiDAR points in its own frame, normalised to ``(x / l, z / h)`` (x
forward, z up from the bottom) with their intensity class (dark: glass and tyres, mid: paint,
bright: lamps and retro-reflectors), scored under a per-class point-density template (a histogram
fitted on the boxes of that class in the *other* scenes). The heading is "told apart" when the points
are likelier under the template as they are than mirrored front-to-back (``x -> -x``). A class
whose shape is front/back symmetric scores about 50 % (more where the views of it are biased: cones
stand on one side of the road with yaw in [0, pi)); the test wants most vehicle boxes right.
"""
from __future__ import annotations

import os
import pickle
from collections import defaultdict

import numpy as np
import pytest

from mmdet3d.core.points import load_points

X_BINS, Z_BINS = 10, 8
INTENSITY_EDGES = (25.0, 120.0)  # LiDAR intensity (0-255) classes: < 25 dark, < 120 mid, else bright
MIN_POINTS = 15
WITH_HEADING = ("car", "truck", "construction_vehicle", "bus", "trailer", "pedestrian", "bicycle", "motorcycle")


def box_frame_points(root: str, infos: list[dict], min_points: int = MIN_POINTS):
    """-> list of (class name, scene token, (P, 3) ``(x / l, z / h, intensity class)``) per GT box."""
    out = []
    for info in infos:
        cloud = load_points(os.path.join(root, info["lidar_path"]))
        points, intensity = cloud[:, :3].astype(np.float64), np.digitize(cloud[:, 3], INTENSITY_EDGES)
        for box, name in zip(info["gt_boxes"], info["gt_names"]):
            x, y, z, l, w, h, yaw = (float(v) for v in box[:7])
            d = points - [x, y, z]
            c, s = np.cos(yaw), np.sin(yaw)
            local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
            inside = (np.abs(local) <= [l / 2, w / 2, h / 2]).all(1)
            if inside.sum() >= min_points:
                out.append((str(name), info["scene_token"],
                            np.stack([local[inside, 0] / l, local[inside, 2] / h + 0.5, intensity[inside]], 1)))
    return out


def _cells(p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i = np.clip(((p[:, 0] + 0.5) * X_BINS).astype(int), 0, X_BINS - 1)
    j = np.clip((p[:, 1] * Z_BINS).astype(int), 0, Z_BINS - 1)
    return i, j, p[:, 2].astype(int)


def _histogram(point_sets) -> np.ndarray:
    """Log density over (x, z, intensity class) cells; each box weighs the same; add-one smoothing."""
    counts = np.ones((X_BINS, Z_BINS, len(INTENSITY_EDGES) + 1))
    for p in point_sets:
        np.add.at(counts, _cells(p), 1.0 / len(p))
    return np.log(counts / counts.sum())


def _loglik(log_density, p) -> float:
    return float(log_density[_cells(p)].sum())


def heading_told_apart(boxes) -> dict[str, tuple[float, int]]:
    """Per class: (share of boxes whose points prefer the true heading to the mirrored one, boxes)."""
    by_class = defaultdict(list)
    for name, scene, points in boxes:
        by_class[name].append((scene, points))
    result = {}
    for name, items in by_class.items():
        scenes = {s for s, _ in items}
        if len(scenes) < 2:
            continue
        right = total = 0
        for scene in scenes:
            template = _histogram([p for s, p in items if s != scene])
            for s, p in items:
                if s == scene:
                    mirrored = p * [-1.0, 1.0, 1.0]
                    right += _loglik(template, p) > _loglik(template, mirrored)
                    total += 1
        result[name] = (right / total, total)
    return result


@pytest.fixture(scope="module")
def heading_dataset(tmp_path_factory):
    """Six scenes of three keyframes (both splits, so leave-one-scene-out has five scenes to fit on)."""
    from mmdet3d.datasets.nuscenes_converter import create_nuscenes_infos
    from mmdet3d.datasets.synthetic import generate_dataset

    root = str(tmp_path_factory.mktemp("heading_cues"))
    generate_dataset(root, version="v1.0-trainval", num_scenes=6, keyframes_per_scene=3, image_size=(160, 90),
                     seed=1, progress=False, workers=1)
    create_nuscenes_infos(root, "v1.0-trainval", out_dir=root, max_sweeps=0)
    infos = []
    for split in ("train", "val"):
        with open(os.path.join(root, f"nuscenes_infos_{split}.pkl"), "rb") as f:
            infos += pickle.load(f)["infos"]
    return root, infos


def test_lidar_points_tell_front_from_back(heading_dataset):
    shares = heading_told_apart(box_frame_points(*heading_dataset))
    print({k: f"{v[0]:.0%} of {v[1]}" for k, v in sorted(shares.items())})
    for name in WITH_HEADING:
        share, count = shares[name]
        assert count >= 15, f"{name}: only {count} boxes with {MIN_POINTS}+ points"
        assert share >= 0.8, f"{name}: heading told apart for only {share:.0%} of {count} boxes"


def test_barrier_and_cone_parts_are_mirror_symmetric():
    from mmdet3d.datasets.synthetic.shapes import make_parts, sample_size

    rng = np.random.default_rng(0)
    for label in ("barrier", "traffic_cone"):
        parts, colors, intensity = make_parts(rng, label, sample_size(rng, label))
        mirrored = parts * [-1, 1, 1, 1, 1, 1]
        key = lambda p, c, i: sorted(zip(np.round(p, 6).tolist(), c.tolist(), i.tolist()))  # noqa: E731
        assert key(parts, colors, intensity) == key(mirrored, colors, intensity), label
