"""Non-maximum suppression in BEV: rotated-IoU NMS and CenterPoint's circle NMS."""
from __future__ import annotations

import torch

from .iou3d import iou_bev_rotated

__all__ = ["nms_bev", "circle_nms"]


def _greedy_keep(overlap: torch.Tensor) -> torch.Tensor:
    """(K, K) bool ``overlap[i, j]``: i suppresses j, rows in descending score -> kept positions."""
    overlap = overlap.cpu()
    suppressed = torch.zeros(overlap.shape[0], dtype=torch.bool)
    keep = []
    for i in range(overlap.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlap[i]
    return torch.tensor(keep, dtype=torch.long)


def _score_order(scores: torch.Tensor, pre_max_size: int | None) -> torch.Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    return order if pre_max_size is None else order[:pre_max_size]


def nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    pre_max_size: int | None = None,
    post_max_size: int | None = None,
) -> torch.Tensor:
    """Greedy rotated BEV NMS.

    boxes (N, 5) ``(x, y, dx, dy, yaw)`` or (N, >=7) 3D boxes, scores (N,). Boxes are visited in
    descending score (the top ``pre_max_size`` only); a box is dropped when its rotated BEV IoU
    with a kept box is greater than ``iou_threshold``. Returns (K,) int64 indices into ``boxes``,
    by descending score, at most ``post_max_size``.
    """
    order = _score_order(scores, pre_max_size)
    if order.numel() == 0:
        return order
    iou = iou_bev_rotated(boxes[order], boxes[order])
    keep = order[_greedy_keep(iou > iou_threshold).to(order.device)]
    return keep if post_max_size is None else keep[:post_max_size]


def circle_nms(
    centers_xy: torch.Tensor,
    scores: torch.Tensor,
    min_radius: float,
    post_max_size: int | None = None,
) -> torch.Tensor:
    """CenterPoint's circle NMS: centers_xy (N, 2), scores (N,) -> (K,) int64 kept indices.

    Visit centres by descending score; drop a centre whose *squared* distance to a kept one is
    ``<= min_radius`` (CenterPoint passes ``min_radius`` as this squared-distance threshold).
    """
    order = _score_order(scores, None)
    if order.numel() == 0:
        return order
    xy = centers_xy[order].to(torch.float64)
    dist2 = (xy[:, None, :] - xy[None, :, :]).pow(2).sum(-1)
    keep = order[_greedy_keep(dist2 <= min_radius).to(order.device)]
    return keep if post_max_size is None else keep[:post_max_size]
