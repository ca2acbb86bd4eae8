"""Rendering primitives (mmdet3d/core/visualize): BEV orientation, box drawing, behind-camera clipping,
the camera layout, devkit-style matching, the HTML index, and the masks a distillation loss exposes."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from mmdet3d.core.bbox import center_distance_matches
from mmdet3d.core.points import bev_occupancy
from mmdet3d.core.visualize import (BevCanvas, camera_layout, clip_segments_to_depth, clip_segments_to_image, colorize,
                                    project_box_edges, write_index)
from mmdet3d.datasets.nuscenes_utils import CAMERA_NAMES
from mmdet3d.models.distillers.losses import InterKeypointLoss

RED = (255, 0, 0)


def _pixels_of(image, color) -> set[tuple[int, int]]:
    array = np.asarray(image)
    rows, cols = np.nonzero((array == np.array(color, dtype=np.uint8)).all(axis=-1))
    return set(zip(rows.tolist(), cols.tolist()))


def test_bev_canvas_puts_x_right_and_y_up():
    canvas = BevCanvas((-10.0, -10.0, 10.0, 10.0), 200)  # 0.1 m per pixel
    assert (canvas.width, canvas.height, canvas.res) == (200, 200, 0.1)
    np.testing.assert_allclose(canvas.to_pixels([[5.0, 0.0], [0.0, 5.0], [-10.0, 10.0]]), [[150, 100], [100, 50], [0, 0]])
    canvas.draw_points(np.array([[5.05, 2.05, 0.0], [-3.05, -7.05, 1.0]]), 0.0, 1.0)
    array = np.asarray(canvas.image)
    assert tuple(array[79, 150]) == tuple(colorize(0.0, 0.0, 1.0)) and tuple(array[170, 69]) == tuple(colorize(1.0, 0.0, 1.0))
    assert (array != array[0, 0]).any(axis=-1).sum() == 2  # nothing else drawn


@pytest.mark.parametrize("yaw, tick_pixel", [(0.0, (80, 165)), (math.pi / 2, (65, 150)), (math.pi, (80, 135))])
def test_bev_box_outline_and_heading_tick(yaw, tick_pixel):
    canvas = BevCanvas((-10.0, -10.0, 10.0, 10.0), 200)
    canvas.draw_boxes(np.array([[5.0, 2.0, 0.0, 4.0, 2.0, 1.5, yaw]]), [RED], width=1)
    drawn = _pixels_of(canvas.image, RED)
    rows, cols = zip(*drawn)
    long_side, short_side = (range(130, 171), range(70, 91)) if yaw != math.pi / 2 else (range(140, 161), range(60, 101))
    assert min(cols) == long_side[0] and max(cols) == long_side[-1] and min(rows) == short_side[0] and max(rows) == short_side[-1]
    assert tick_pixel in drawn  # the tick runs from the centre (row 80, col 150) towards the front
    back = (2 * 80 - tick_pixel[0], 2 * 150 - tick_pixel[1])
    assert back not in drawn


def test_fill_map_lays_cells_in_the_bev_frame():
    canvas = BevCanvas((-10.0, -10.0, 10.0, 10.0), 200)
    grid = np.zeros((20, 20))
    grid[15, 5] = 1.0  # x index 15 -> x in [5, 6); y index 5 -> y in [-5, -4)
    canvas.fill_map(grid, 0.0, 1.0)
    hot = _pixels_of(canvas.image, tuple(colorize(1.0, 0.0, 1.0, "heat")))
    rows, cols = zip(*hot)
    assert (min(cols), max(cols), min(rows), max(rows)) == (150, 159, 140, 149)


def test_clip_segments_to_depth_cuts_at_the_plane():
    start = np.array([[0.0, 0.0, -2.0], [0.0, 0.0, 1.0], [0.0, 0.0, -3.0]])
    end = np.array([[8.0, 0.0, 6.0], [0.0, 0.0, 2.0], [0.0, 0.0, -1.0]])
    a, b, keep = clip_segments_to_depth(start, end, start[:, 2], end[:, 2], near=0.1)
    assert keep.tolist() == [True, True, False]
    np.testing.assert_allclose(a[0], [8.0 * 2.1 / 8.0, 0.0, 0.1])  # t = (0.1 + 2) / 8 along the segment
    np.testing.assert_allclose(b[0], end[0])
    np.testing.assert_allclose(np.stack([a[1], b[1]]), np.stack([start[1], end[1]]))


def test_clip_segments_to_image():
    segments = np.array([[[-10.0, 5.0], [10.0, 5.0]], [[-5.0, -5.0], [-1.0, -1.0]], [[2.0, 2.0], [4.0, 8.0]]])
    clipped, keep = clip_segments_to_image(segments, 20.0, 6.0)
    assert keep.tolist() == [True, False, True]
    np.testing.assert_allclose(clipped[0], [[0.0, 5.0], [10.0, 5.0]])
    np.testing.assert_allclose(clipped[2], [[2.0, 2.0], [3.0 + 1.0 / 3.0, 6.0]])


def _forward_camera() -> np.ndarray:
    """lidar2image of a camera at the origin looking along LiDAR +x (f = 100, 200 x 100 image)."""
    lidar2camera = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    intrinsics = np.array([[100.0, 0.0, 100.0, 0.0], [0.0, 100.0, 50.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    return intrinsics @ lidar2camera


def test_box_in_front_projects_its_corners():
    box = np.array([[10.0, -1.0, 0.0, 2.0, 2.0, 2.0, 0.0]])  # depths 9..11, camera x 0..2
    (segments,) = project_box_edges(box, _forward_camera(), (100, 200))
    assert segments.shape == (12, 2, 2)
    near_top_right = [100 + 100 * 2 / 9, 50 - 100 * 1 / 9]  # corner (9, -2, 1): u = cx + f X / d, v = cy - f Z / d
    assert np.isclose(segments.reshape(-1, 2), near_top_right).all(axis=1).any()


def test_box_partly_behind_the_camera_is_clipped_not_mirrored():
    camera = _forward_camera()
    straddling = np.array([[2.0, -2.0, 0.0, 8.0, 2.0, 2.0, 0.0]])  # depths -2..6, camera x 1..3 (right of centre)
    (segments,) = project_box_edges(straddling, camera, (100, 200))
    assert len(segments) > 0
    # every visible point has depth > 0 and camera x > 0, so it projects right of the centre column
    assert segments[..., 0].min() >= 100.0
    behind = np.array([[-5.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.0]])
    assert project_box_edges(behind, camera, (100, 200))[0].shape == (0, 2, 2)


def test_camera_layout_is_the_nuscenes_one():
    places = dict(zip(CAMERA_NAMES, camera_layout(CAMERA_NAMES)))
    assert places == {"CAM_FRONT_LEFT": (0, 0), "CAM_FRONT": (0, 1), "CAM_FRONT_RIGHT": (0, 2),
                      "CAM_BACK_LEFT": (1, 0), "CAM_BACK": (1, 1), "CAM_BACK_RIGHT": (1, 2)}
    assert camera_layout(["CAM_FRONT", "A", "B"]) == [(0, 1), (0, 0), (0, 2)]


def test_center_distance_matches_greedy_by_score_per_class():
    gt = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    gt_labels = np.array([0, 0, 1])
    pred = np.array([[0.5, 0.0], [0.2, 0.0], [11.9, 0.0], [20.0, 0.5], [30.0, 0.0], [10.0, 2.0]])
    scores = np.array([0.5, 0.9, 0.4, 0.8, 0.7, 0.3])
    labels = np.array([0, 0, 0, 0, 0, 0])
    # 0.9 takes GT 0; 0.8 is not of GT 2's class; 0.5 finds GT 0 taken and GT 1 too far; 0.4 at
    # 1.9 m takes GT 1, so 0.3 finds nothing left
    assert center_distance_matches(gt, gt_labels, pred, scores, labels).tolist() == [-1, 0, 1, -1, -1, -1]
    # exactly 2 m is no match (the devkit's strict '<')
    assert center_distance_matches(gt[:1], [0], [[2.0, 0.0], [0.0, 1.999]], [0.9, 0.1], [0, 0]).tolist() == [-1, 0]
    assert center_distance_matches(gt, gt_labels, np.zeros((0, 2)), [], []).tolist() == []


def test_bev_occupancy_marks_cells_with_points():
    points = torch.tensor([[0.1, 0.1, 0.0], [-9.9, 9.9, 0.0], [11.0, 0.0, 0.0], [9.99, -10.0, 0.0]])
    mask = bev_occupancy(points, (-10.0, -10.0, 10.0, 10.0), (10, 20))
    assert mask.shape == (10, 20) and mask.sum() == 3
    assert mask[5, 10] == 1 and mask[0, 19] == 1 and mask[9, 0] == 1


def test_index_links_only_the_renders_that_exist(tmp_path):
    (tmp_path / "bev").mkdir()
    (tmp_path / "camera").mkdir()
    for name in ("bev/a.png", "camera/a.png", "bev/b<c.png"):
        (tmp_path / name).write_bytes(b"png")
    path = write_index(str(tmp_path), [{"token": "a", "gt": 3, "pred": 2, "matched": 1}, {"token": "b<c", "gt": 0}])
    text = open(path).read()
    links = set(re.findall(r'(?:href|src)="([^"]+)"', text))
    assert links == {"bev/a.png", "camera/a.png", "bev/b&lt;c.png"}
    assert "<td>3</td><td>2</td><td>1</td>" in text and "b&lt;c" in text and "<b<c" not in text


def test_tig_losses_expose_their_keypoint_lattices():
    loss = InterKeypointLoss(lattice=3, enlarge=1.0)
    boxes = [torch.tensor([[10.0, 5.0, 0.0, 4.0, 2.0, 1.5, math.pi / 2, 0.0, 0.0]]), torch.zeros(0, 9)]
    (caption, lattices), = loss.visual_masks({}, {}, {"gt_bboxes_3d": boxes}, {}).items()
    assert "3x3" in caption and "+1 m" in caption and [len(p) for p in lattices] == [9, 0]
    # rows along the length (6 m, rotated to +y), columns across the width (4 m, along -x)
    np.testing.assert_allclose(lattices[0][0], [12.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(lattices[0][4], [10.0, 5.0], atol=1e-6)
