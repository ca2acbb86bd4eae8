"""IoU of rotated boxes in BEV and in 3D, pure PyTorch and vectorised.

Boxes follow ``docs/data_format.md``: ``(x, y, z, dx, dy, dz, yaw, ...)`` with a gravity-centre
``z``; BEV boxes are ``(x, y, dx, dy, yaw)``. Functions taking BEV boxes accept either: a last
dimension of 5 is read as BEV, anything >= 7 as 3D boxes.

The rotated intersection is exact: the intersection of two convex quadrilaterals is the convex
polygon whose vertices are the corners of each box inside the other and the crossings of their
edges; those points are ordered by angle around their mean and the area is the shoelace sum.
Computations run in float64; pairs whose circumscribed circles do not meet are skipped.
"""
from __future__ import annotations

import torch

from mmdet3d.core.bbox.structures import bev_corners

__all__ = ["to_bev_boxes", "bev_intersection_rotated", "iou_bev_rotated", "iou_bev_aligned", "iou_3d"]


def to_bev_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 5) BEV or (N, >=7) 3D boxes -> (N, 5) ``(x, y, dx, dy, yaw)``."""
    if boxes.shape[-1] == 5:
        return boxes
    if boxes.shape[-1] < 7:
        raise ValueError(f"boxes must have 5 (BEV) or >= 7 (3D) columns, got {boxes.shape[-1]}")
    return boxes[:, [0, 1, 3, 4, 6]]


def _corners(bev: torch.Tensor) -> torch.Tensor:
    """(N, 5) -> (N, 4, 2) corners, counter-clockwise."""
    zeros, ones = bev.new_zeros(bev.shape[0], 1), bev.new_ones(bev.shape[0], 1)
    boxes = torch.cat([bev[:, :2], zeros, bev[:, 2:4], ones, bev[:, 4:5]], dim=1)  # (N, 7), unit height
    return bev_corners(boxes)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _quad_intersection_area(pa: torch.Tensor, pb: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """(K, 4, 2), (K, 4, 2) counter-clockwise convex quads -> (K,) intersection areas."""
    ea = pa.roll(-1, dims=1) - pa  # (K, 4, 2) edge vectors
    eb = pb.roll(-1, dims=1) - pb

    def inside(points, poly, edges):
        # (K, P, 2) points vs (K, 4, 2) polygon -> (K, P): on the left of (or on) every edge
        rel = points[:, :, None, :] - poly[:, None, :, :]  # (K, P, 4, 2)
        scale = edges.norm(dim=-1).clamp(min=eps)[:, None, :]
        return (_cross(edges[:, None, :, :], rel) / scale >= -eps).all(dim=2)

    # edge i of a against edge j of b: pa_i + t ea_i = pb_j + u eb_j
    da = ea[:, :, None, :]  # (K, 4, 1, 2)
    db = eb[:, None, :, :]  # (K, 1, 4, 2)
    diff = pb[:, None, :, :] - pa[:, :, None, :]  # (K, 4, 4, 2)
    denom = _cross(da, db)
    parallel = denom.abs() < eps
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t = _cross(diff, db) / safe
    u = _cross(diff, da) / safe
    crossing = ~parallel & (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    points_x = pa[:, :, None, :] + t[..., None] * da  # (K, 4, 4, 2)

    points = torch.cat([pa, pb, points_x.flatten(1, 2)], dim=1)  # (K, 24, 2)
    valid = torch.cat([inside(pa, pb, eb), inside(pb, pa, ea), crossing.flatten(1, 2)], dim=1)
    count = valid.sum(1)
    weights = valid.to(points.dtype)
    center = (points * weights[..., None]).sum(1) / count.clamp(min=1)[:, None].to(points.dtype)
    rel = points - center[:, None, :]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid points sort last
    order = angle.argsort(dim=1)
    ordered = torch.gather(rel, 1, order[..., None].expand(-1, -1, 2))
    ordered_valid = torch.gather(valid, 1, order)
    # invalid slots repeat the first vertex: they add zero-area segments to the closed polygon
    ordered = torch.where(ordered_valid[..., None], ordered, ordered[:, :1, :])
    area = 0.5 * _cross(ordered, ordered.roll(-1, dims=1)).sum(1)
    return torch.where(count >= 3, area.clamp(min=0), torch.zeros_like(area))


def bev_intersection_rotated(boxes_a: torch.Tensor, boxes_b: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """(N, 5|>=7), (M, 5|>=7) -> (N, M) BEV intersection areas of the rotated footprints."""
    a = to_bev_boxes(boxes_a).to(torch.float64)
    b = to_bev_boxes(boxes_b).to(torch.float64)
    out = a.new_zeros(a.shape[0], b.shape[0])
    if out.numel() == 0:
        return out.to(boxes_a.dtype)
    radius_a = a[:, 2:4].norm(dim=1) / 2
    radius_b = b[:, 2:4].norm(dim=1) / 2
    dist = torch.cdist(a[:, :2], b[:, :2])
    ia, ib = (dist <= radius_a[:, None] + radius_b[None, :]).nonzero(as_tuple=True)
    ca, cb = _corners(a), _corners(b)
    for start in range(0, ia.numel(), chunk):
        sa, sb = ia[start:start + chunk], ib[start:start + chunk]
        out[sa, sb] = _quad_intersection_area(ca[sa], cb[sb])
    return out.to(boxes_a.dtype)


def iou_bev_rotated(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 5|>=7), (M, 5|>=7) -> (N, M) IoU of the rotated BEV footprints."""
    inter = bev_intersection_rotated(boxes_a, boxes_b).to(torch.float64)
    a, b = to_bev_boxes(boxes_a).to(torch.float64), to_bev_boxes(boxes_b).to(torch.float64)
    area_a, area_b = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]
    union = area_a[:, None] + area_b[None, :] - inter
    return (inter / union.clamp(min=1e-12)).to(boxes_a.dtype)


def iou_bev_aligned(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, 5|>=7), (M, 5|>=7) -> (N, M) IoU of axis-aligned BEV boxes.

    Each box is first turned to its nearest axis (mmdet3d's "nearest BEV"): ``dx`` and ``dy`` swap
    when the yaw is closer to +-90 degrees than to 0 or 180, then the IoU is that of the
    axis-aligned rectangles.
    """

    def xyxy(boxes):
        bev = to_bev_boxes(boxes).to(torch.float64)
        yaw = torch.remainder(bev[:, 4] + torch.pi / 2, torch.pi) - torch.pi / 2  # in [-pi/2, pi/2)
        swap = yaw.abs() > torch.pi / 4
        size = torch.where(swap[:, None], bev[:, [3, 2]], bev[:, 2:4])
        return torch.cat([bev[:, :2] - size / 2, bev[:, :2] + size / 2], dim=1)

    a, b = xyxy(boxes_a), xyxy(boxes_b)
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(1), (b[:, 2:] - b[:, :2]).prod(1)
    union = area_a[:, None] + area_b[None, :] - inter
    return (inter / union.clamp(min=1e-12)).to(boxes_a.dtype)


def iou_3d(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """(N, >=7), (M, >=7) gravity-centre boxes -> (N, M) 3D IoU (rotated BEV overlap x height overlap)."""
    a, b = boxes_a.to(torch.float64), boxes_b.to(torch.float64)
    inter_bev = bev_intersection_rotated(a, b)
    top = torch.minimum(a[:, None, 2] + a[:, None, 5] / 2, b[None, :, 2] + b[None, :, 5] / 2)
    bottom = torch.maximum(a[:, None, 2] - a[:, None, 5] / 2, b[None, :, 2] - b[None, :, 5] / 2)
    inter = inter_bev * (top - bottom).clamp(min=0)
    vol_a, vol_b = a[:, 3:6].prod(1), b[:, 3:6].prod(1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    return (inter / union.clamp(min=1e-12)).to(boxes_a.dtype)
