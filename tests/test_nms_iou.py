"""Rotated BEV / 3D IoU against shapely polygons, NMS against slow greedy loops."""
import math

import pytest
import torch
from shapely import affinity
from shapely.geometry import box as shapely_box

from mmdet3d.ops.iou3d import bev_intersection_rotated, iou_3d, iou_bev_aligned, iou_bev_rotated
from mmdet3d.ops.nms import circle_nms, nms_bev


def polygon(b):
    x, y, dx, dy, yaw = (float(v) for v in b)
    rect = shapely_box(-dx / 2, -dy / 2, dx / 2, dy / 2)
    return affinity.translate(affinity.rotate(rect, yaw, origin=(0, 0), use_radians=True), x, y)


def shapely_iou(a, b):
    pa, pb = polygon(a), polygon(b)
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def random_boxes(num, seed, spread=4.0):
    """(num, 7) gravity-centre boxes clustered so that many pairs overlap."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=gen, dtype=torch.float64) * spread
    z = torch.rand(num, 1, generator=gen, dtype=torch.float64) * 2
    size = 0.3 + torch.rand(num, 3, generator=gen, dtype=torch.float64) * 3
    yaw = (torch.rand(num, 1, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    return torch.cat([xy, z, size, yaw], dim=1)


def bev(boxes):
    return boxes[:, [0, 1, 3, 4, 6]]


@pytest.mark.parametrize("num_a,num_b,seed", [(1, 1, 0), (7, 5, 1), (20, 30, 2), (40, 40, 3)])
def test_rotated_iou_matches_shapely(num_a, num_b, seed):
    a, b = random_boxes(num_a, seed), random_boxes(num_b, seed + 100)
    iou = iou_bev_rotated(a, b)
    inter = bev_intersection_rotated(bev(a), bev(b))
    expected_iou = torch.tensor([[shapely_iou(p, q) for q in bev(b)] for p in bev(a)], dtype=torch.float64)
    expected_inter = torch.tensor([[polygon(p).intersection(polygon(q)).area for q in bev(b)] for p in bev(a)],
                                  dtype=torch.float64)
    torch.testing.assert_close(iou, expected_iou, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(inter, expected_inter, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(iou_bev_rotated(bev(a), bev(b)), iou)  # BEV (N, 5) input


def test_rotated_iou_edge_cases():
    base = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.3]], dtype=torch.float64)
    cases = {
        "identical": (base, 1.0),
        "half_turn": (base + torch.tensor([[0, 0, 0, 0, math.pi]], dtype=torch.float64), 1.0),
        "disjoint": (base + torch.tensor([[10.0, 0, 0, 0, 0]], dtype=torch.float64), 0.0),
        "inside": (torch.tensor([[0.0, 0.0, 2.0, 1.0, 0.3]], dtype=torch.float64), 0.25),
        "square_quarter_turn": (None, 1.0),
    }
    for name, (other, expected) in cases.items():
        a = base
        if name == "square_quarter_turn":
            a = torch.tensor([[1.0, 2.0, 3.0, 3.0, 0.1]], dtype=torch.float64)
            other = a + torch.tensor([[0, 0, 0, 0, math.pi / 2]], dtype=torch.float64)
        assert iou_bev_rotated(a, other).item() == pytest.approx(expected, abs=1e-9), name
    # axis-aligned boxes sharing an edge line, and touching corner to corner
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0, 2.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0, 0.0], [2.0, 0.5, 2.0, 1.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([[shapely_iou(a[0], q) for q in b]], dtype=torch.float64)
    torch.testing.assert_close(iou_bev_rotated(a, b), expected, atol=1e-9, rtol=0)


def test_iou_3d_matches_shapely_times_height():
    a, b = random_boxes(15, 5), random_boxes(12, 6)
    expected = torch.zeros(15, 12, dtype=torch.float64)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            area = polygon(bev(p[None])[0]).intersection(polygon(bev(q[None])[0])).area
            height = max(0.0, min(p[2] + p[5] / 2, q[2] + q[5] / 2) - max(p[2] - p[5] / 2, q[2] - q[5] / 2))
            inter = area * float(height)
            expected[i, j] = inter / (float(p[3:6].prod()) + float(q[3:6].prod()) - inter)
    torch.testing.assert_close(iou_3d(a, b), expected, rtol=1e-7, atol=1e-9)
    assert torch.allclose(torch.diagonal(iou_3d(a, a)), torch.ones(15, dtype=torch.float64))
    assert iou_3d(a.float(), b.float()).dtype == torch.float32


def test_aligned_iou_uses_nearest_axis():
    a, b = random_boxes(10, 7), random_boxes(9, 8)

    def nearest(box):
        x, y, dx, dy, yaw = (float(v) for v in box)
        wrapped = (yaw + math.pi / 2) % math.pi - math.pi / 2
        if abs(wrapped) > math.pi / 4:
            dx, dy = dy, dx
        return (x, y, dx, dy, 0.0)

    expected = torch.tensor([[shapely_iou(nearest(p), nearest(q)) for q in bev(b)] for p in bev(a)], dtype=torch.float64)
    torch.testing.assert_close(iou_bev_aligned(a, b), expected, rtol=1e-9, atol=1e-12)


def nms_loop(boxes, scores, threshold, pre_max_size=None, post_max_size=None):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:pre_max_size]
    keep = []
    for i in order:
        if all(shapely_iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep[:post_max_size]


@pytest.mark.parametrize("num,seed,threshold,pre,post", [
    (30, 0, 0.1, None, None), (60, 1, 0.3, 40, 10), (50, 2, 0.5, None, 20), (1, 3, 0.2, None, None),
])
def test_nms_bev_matches_greedy_loop(num, seed, threshold, pre, post):
    boxes = random_boxes(num, seed, spread=6.0)
    scores = torch.rand(num, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    keep = nms_bev(boxes, scores, threshold, pre_max_size=pre, post_max_size=post)
    assert keep.tolist() == nms_loop(bev(boxes), scores, threshold, pre, post)
    assert keep.dtype == torch.long
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])
    assert nms_bev(bev(boxes).float(), scores.float(), threshold, pre, post).tolist() == keep.tolist()


def test_nms_empty_input():
    assert nms_bev(torch.zeros(0, 7), torch.zeros(0), 0.5).numel() == 0
    assert circle_nms(torch.zeros(0, 2), torch.zeros(0), 1.0).numel() == 0


@pytest.mark.parametrize("seed,radius,post", [(0, 0.5, None), (1, 2.0, 5), (2, 0.0, None)])
def test_circle_nms_matches_loop(seed, radius, post):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(80, 2, generator=gen) * 5
    centers[5] = centers[4]  # a duplicate centre is suppressed even at radius 0
    scores = torch.rand(80, generator=gen)
    order = sorted(range(80), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(float(((centers[i].double() - centers[k].double()) ** 2).sum()) > radius for k in keep):
            keep.append(i)
    assert circle_nms(centers, scores, radius, post).tolist() == keep[:post]
