"""TiG distillation (DESIGN.md 5.3 and 5.4): inner-depth supervision and inner-feature BEV
distillation with inter-keypoint and inter-channel relations.

The functions are unweighted; the registered loss modules (``tig_modules.py``) apply the config
weight. Shapes use B batch, N cameras, D depth bins, C channels, X x Y BEV cells, K boxes,
M = lattice**2 keypoints per box.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from mmdet3d.ops.bev_pool import csr_tensor

__all__ = ["inner_depth_loss", "box_lattice_points", "box_keypoint_matrix", "sample_box_keypoints", "inter_keypoint_loss",
           "inter_channel_loss", "relation_loss", "gram_relation_loss"]


def inner_depth_loss(depth_logits: torch.Tensor, depth_map: torch.Tensor, fg_map: torch.Tensor,
                     bin_centers: torch.Tensor) -> torch.Tensor:
    """Relative depth inside each object, anchored at the cell the student already gets most right.

    depth_logits (B, N, D, h, w); depth_map (B, N, h, w) metres, 0 = no point; fg_map (B, N, h, w)
    int, ``k + 1`` for a cell whose point lies in box k, 0 for background; bin_centers (D,).
    ``d_hat = sum_b softmax(logits)_b * v_b``; per (sample, camera, box) group the reference cell
    ``r = argmin |d_hat - d|``; ``e_p = (d_hat_p - stopgrad(d_hat_r)) - (d_p - d_r)``;
    returns ``sum_fg e_p^2 / max(#fg, 1)`` (0 without foreground cells).
    """
    fg = (fg_map > 0) & (depth_map > 0)
    if not fg.any():
        return depth_logits.sum() * 0.0
    b, n, y, x = torch.nonzero(fg, as_tuple=True)
    # the expected depth at the foreground cells only: (F, D) logits -> (F,)
    pred = depth_logits[b, n, :, y, x].softmax(dim=-1) @ bin_centers.to(depth_logits.dtype)
    num_cams, max_box = fg_map.shape[1], int(fg_map.max()) + 1
    # One group id per (sample, camera, box): cells of the same object seen by one camera.
    group = (b * num_cams + n) * max_box + fg_map[fg]
    _, group = torch.unique(group, return_inverse=True)
    target = depth_map[fg].to(pred.dtype)
    error = (pred - target).abs().detach()
    # Reference of each group: its cell of least error (the lowest index on ties), by a stable
    # sort on the error then on the group; every group gets one even if an error is NaN.
    order = torch.argsort(error, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = group[order][1:] != group[order][:-1]
    ref = order[first][group]
    e = (pred - pred[ref].detach()) - (target - target[ref])
    return e.pow(2).sum() / max(len(e), 1)


def box_lattice_points(boxes: torch.Tensor, lattice: int, enlarge: float) -> torch.Tensor:
    """(K, >=7) boxes ``(x, y, z, dx, dy, dz, yaw, ...)`` -> (K, lattice**2, 2) metric BEV positions.

    An ``S x S`` lattice with its edges on the footprint enlarged by ``enlarge`` metres on every side
    (length and width grow by ``2 * enlarge``), rotated by the box yaw; rows along the box length.
    """
    steps = torch.linspace(-0.5, 0.5, lattice, dtype=boxes.dtype, device=boxes.device)
    along, across = torch.meshgrid(steps, steps, indexing="ij")  # (S, S)
    length = boxes[:, 3:4] + 2 * enlarge  # (K, 1)
    width = boxes[:, 4:5] + 2 * enlarge
    lx = along.reshape(1, -1) * length  # (K, M) in the box frame
    ly = across.reshape(1, -1) * width
    cos, sin = boxes[:, 6:7].cos(), boxes[:, 6:7].sin()
    x = boxes[:, 0:1] + cos * lx - sin * ly
    y = boxes[:, 1:2] + sin * lx + cos * ly
    return torch.stack([x, y], dim=-1)


def box_keypoint_matrix(boxes: Sequence[torch.Tensor], bev_shape: Sequence[int], bev_range: Sequence[float],
                        lattice: int, enlarge: float, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """The (K*M, B*X*Y) sparse CSR matrix of bilinear weights (4 per keypoint) that samples a
    (B, X, Y) grid over ``bev_range`` at every box's lattice (``sample_box_keypoints``); one matrix
    serves every map of that grid (student and teacher)."""
    batch_size, size_x, size_y = (int(v) for v in bev_shape)
    m = lattice * lattice
    device = boxes[0].device if device is None else device
    x_min, y_min, x_max, y_max = (float(v) for v in bev_range)
    xy = torch.cat([box_lattice_points(b.to(device=device, dtype=dtype), lattice, enlarge) for b in boxes])  # (K, M, 2)
    sample = torch.cat([torch.full((len(b),), i, dtype=torch.long, device=device) for i, b in enumerate(boxes)])
    # continuous cell coordinates: cell i's centre at i (the map's edges at -0.5 and size - 0.5)
    fx = (xy[..., 0] - x_min) / (x_max - x_min) * size_x - 0.5
    fy = (xy[..., 1] - y_min) / (y_max - y_min) * size_y - 0.5
    x0, y0 = fx.floor(), fy.floor()
    wx, wy = fx - x0, fy - y0
    x0, y0 = x0.long(), y0.long()
    cols, weights = [], []
    for dx, weight_x in ((0, 1 - wx), (1, wx)):
        for dy, weight_y in ((0, 1 - wy), (1, wy)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < size_x) & (yi >= 0) & (yi < size_y)
            cols.append(torch.where(inside, (sample[:, None] * size_x + xi) * size_y + yi, 0))
            weights.append(torch.where(inside, weight_x * weight_y, 0))
    rows = xy.shape[0] * m
    return csr_tensor(
        torch.arange(0, 4 * rows + 1, 4, device=device), torch.stack(cols, -1).reshape(-1),
        torch.stack(weights, -1).reshape(-1).detach(), size=(rows, batch_size * size_x * size_y))


def sample_box_keypoints(bev: torch.Tensor, boxes: Sequence[torch.Tensor], bev_range: Sequence[float],
                         lattice: int, enlarge: float, matrix: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear samples of ``bev`` at every box's lattice: -> (K, C, lattice**2), K = all boxes.

    bev (B, C, X, Y) over ``bev_range = (x_min, y_min, x_max, y_max)`` with cell centres at
    ``min + (i + 0.5) * cell``; boxes: B tensors (K_b, >=7). Points off the map sample zeros (the
    map is zero-padded), as ``grid_sample(align_corners=False, padding_mode="zeros")``. The
    samples are one sparse (K*M, B*X*Y) matrix of bilinear weights (4 per keypoint) times the map:
    the same values, computed as row gathers (``_BilinearSample``), with a backward several times
    cheaper on CPU than ``grid_sample``'s. ``matrix``: that of ``box_keypoint_matrix`` for these boxes and grid, when
    several maps are sampled.
    """
    batch_size, channels, size_x, size_y = bev.shape
    m = lattice * lattice
    if sum(len(b) for b in boxes) == 0:
        return bev.new_zeros(0, channels, m)
    if matrix is None:
        matrix = box_keypoint_matrix(boxes, (batch_size, size_x, size_y), bev_range, lattice, enlarge, bev.dtype, bev.device)
    flat = bev.permute(0, 2, 3, 1).reshape(-1, channels)  # (B, C, X, Y) -> (B*X*Y, C)
    return _BilinearSample.apply(flat, matrix).view(-1, m, channels).transpose(1, 2)  # (K*M, C) -> (K, C, M)


# Up to this many scattered values (4 per keypoint x channels) the backward is an ``index_add_``
# per corner; above it (the paper's lattice 24) the transposed sparse product, whose CSR transpose
# then costs less than the scatter's (rows, C) temporaries.
_INDEX_ADD_MAX_ELEMENTS = 1 << 22


def _corners(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-entries-per-row CSR of ``box_keypoint_matrix`` -> its columns (4, R) and weights
    (4, R, 1), corner-major: each corner is one contiguous row gather."""
    rows = matrix.shape[0]
    cols = matrix.col_indices().view(rows, 4).t().contiguous()
    return cols, matrix.values().view(rows, 4).t().contiguous()[..., None]


class _BilinearSample(torch.autograd.Function):
    """``matrix @ flat`` for the 4-entries-per-row CSR of ``box_keypoint_matrix``, as four row
    gathers of ``flat`` weighted and summed (on CPU about 2.5x faster than ``torch.sparse.mm`` on
    this CSR); the backward scatters each keypoint's gradient onto its 4 cells, one
    ``index_add_`` per corner, for the lattices of the synthetic configs."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        cols, weights = _corners(matrix)
        ctx.matrix, ctx.cols, ctx.weights = matrix, cols, weights
        ctx.num_cells = flat.shape[0]
        out = flat.index_select(0, cols[0]).mul_(weights[0])
        for corner in range(1, 4):
            out.addcmul_(flat.index_select(0, cols[corner]), weights[corner])
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        matrix, channels = ctx.matrix, grad.shape[1]
        grad = grad.contiguous()
        if matrix.values().numel() * channels > _INDEX_ADD_MAX_ELEMENTS:
            return torch.sparse.mm(matrix.t().to_sparse_csr(), grad), None
        out = grad.new_zeros(ctx.num_cells, channels)
        for corner in range(4):
            out.index_add_(0, ctx.cols[corner], grad * ctx.weights[corner])
        return out, None


def relation_loss(student_relation: torch.Tensor, teacher_relation: torch.Tensor) -> torch.Tensor:
    """(K, R, R) relation matrices, each row L2-normalised -> mean over boxes and rows of the
    summed squared difference (0 for K = 0)."""
    if student_relation.shape[0] == 0:
        return student_relation.sum() * 0.0
    s = F.normalize(student_relation, dim=-1)
    t = F.normalize(teacher_relation, dim=-1)
    return (s - t).pow(2).sum(dim=-1).mean()


def _normalised_gram_rows(s, t, eps):
    """``(K, R, F)`` pair -> ``G^_s``, ``E = G^_s - G^_t``, ``max(|G_s|, eps)``, ``<G^_s, E>`` per row
    (0 where ``|G_s| <= eps``) and ``|E|^2`` per row; every (K, R, 1) value from the row norms."""
    student = torch.bmm(s, s.transpose(1, 2))
    teacher = torch.bmm(t, t.transpose(1, 2))
    norm_s = torch.linalg.vector_norm(student, dim=-1, keepdim=True)
    norm_t = torch.linalg.vector_norm(teacher, dim=-1, keepdim=True)
    scale_s, scale_t = norm_s.clamp(min=eps), norm_t.clamp(min=eps)
    student.div_(scale_s)
    diff = torch.addcdiv(student, teacher, scale_t, value=-1)  # G^_s - G^_t
    rows = torch.linalg.vector_norm(diff, dim=-1, keepdim=True).square_()
    sq_s, sq_t = (norm_s / scale_s).square_(), (norm_t / scale_t).square_()
    proj = torch.where(norm_s > eps, (sq_s - sq_t + rows) * 0.5, 0.0)
    return student, diff, scale_s, proj, rows


class _GramRelationLoss(torch.autograd.Function):
    """``relation_loss(S S^T, T T^T)`` for (K, R, F) ``S`` (needs grad) and ``T`` (does not).

    The same value and gradient as the autograd graph of ``relation_loss`` (``F.normalize``'s
    ``max(|row|, eps)`` included) in fewer passes over the (K, R, R) matrices, which bound its
    cost on CPU: with ``G^ = G / max(|G|, eps)`` per row and ``E = G^_s - G^_t``, the loss is
    ``sum |E|^2 / (K R)``; the backward is ``dG = k (E - G^ p) / max(|G|, eps)`` with
    ``p = <G^, E>`` per row (0 where ``|G| <= eps``, whose rows the norm does not divide), ``k =
    2 / (K R)``, and ``dS = (dG + dG^T) S``.
    ``p`` comes from the row norms: ``<G^, E> = (|G^_s|^2 - |G^_t|^2 + |E|^2) / 2``.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
        student, diff, scale_s, proj, rows = _normalised_gram_rows(s, t, eps)
        ctx.save_for_backward(s, student, diff, scale_s, proj)
        return rows.sum() / (s.shape[0] * s.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        s, student, diff, scale_s, proj = ctx.saved_tensors
        row_scale = grad * 2.0 / (s.shape[0] * s.shape[1]) / scale_s  # (K, R, 1)
        d_gram = torch.addcmul(diff, student, proj, value=-1).mul_(row_scale)  # k (E - G^ p) / |G|
        return torch.bmm(d_gram + d_gram.transpose(1, 2), s), None, None


def gram_relation_loss(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``relation_loss(s @ s^T, t @ t^T)`` for (K, R, F) row features; a teacher without gradient
    (the distillation case) takes the fused ``_GramRelationLoss``."""
    if s.shape[0] == 0:
        return s.sum() * 0.0
    if t.requires_grad or not s.requires_grad:
        return relation_loss(s @ s.transpose(1, 2), t @ t.transpose(1, 2))
    return _GramRelationLoss.apply(s, t, eps)


def _gram_row_loss(ps: torch.Tensor, pt: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``relation_loss(Ps^T Ps, Pt^T Pt)`` for (K, Cs, M) / (K, Ct, M) without the (M x M) matrices.

    Row ``i`` of ``G = P^T P`` is ``p_i^T P``, so ``|G_s,i|^2 = p_i^T (Ps Ps^T) p_i`` and
    ``<G_s,i, G_t,i> = ps_i^T (Ps Pt^T) pt_i``: O(M C^2) instead of O(M^2 C) (M = 576 at lattice 24).
    ``|a / |a| - b / |b||^2`` is then expanded with F.normalize's ``max(|.|, eps)``.
    """
    cross = ps @ pt.transpose(1, 2)  # (K, Cs, Ct)
    dot = (ps * (cross @ pt)).sum(dim=1)  # (K, M): ps_i^T (Ps Pt^T) pt_i
    sq_s = (ps * ((ps @ ps.transpose(1, 2)) @ ps)).sum(dim=1)  # |G_s,i|^2
    sq_t = (pt * ((pt @ pt.transpose(1, 2)) @ pt)).sum(dim=1)
    # |a / max(|a|, eps)|^2 = |a|^2 / max(|a|^2, eps^2): no square root of 0, so a keypoint off the
    # map (a zero row) has a finite gradient
    safe_s, safe_t = sq_s.clamp(min=eps * eps), sq_t.clamp(min=eps * eps)
    rows = sq_s / safe_s + sq_t / safe_t - 2 * dot / (safe_s.sqrt() * safe_t.sqrt())
    return rows.clamp(min=0).mean()


def inter_keypoint_loss(student_points: torch.Tensor, teacher_points: torch.Tensor) -> torch.Tensor:
    """(K, C, M) keypoint features -> relation loss of the (M x M) keypoint Gram matrices ``P^T P``.

    The same value two ways, whichever costs fewer multiplies: the explicit matrices (O(M^2 C),
    the synthetic lattice 8: M = 64 below C = 128) or ``_gram_row_loss`` (O(M C^2), the paper's
    lattice 24: M = 576).
    """
    if student_points.shape[0] == 0:
        return student_points.sum() * 0.0
    cs, ct, m = student_points.shape[1], teacher_points.shape[1], student_points.shape[2]
    if m * (cs + ct) <= 2 * (cs * ct + cs * cs + ct * ct):
        return gram_relation_loss(student_points.transpose(1, 2), teacher_points.transpose(1, 2))
    return _gram_row_loss(student_points, teacher_points)


def inter_channel_loss(student_points: torch.Tensor, teacher_points: torch.Tensor) -> torch.Tensor:
    """(K, C, M) keypoint features (student already adapted to the teacher's C) -> relation loss of
    the (C x C) channel Gram matrices ``P P^T``."""
    return gram_relation_loss(student_points, teacher_points)
