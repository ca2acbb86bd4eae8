"""TiG losses (DESIGN.md 5.3, 5.4): zeros, hand-computed values, edge cases, batched sampling."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmdet3d.models.distillers import (inner_depth_loss, inter_channel_loss, inter_keypoint_loss,
                                       sample_box_keypoints)
from mmdet3d.models.distillers.losses import box_lattice_points

BINS = torch.tensor([1.5, 2.5, 3.5, 4.5])


def _logits_for(depths: torch.Tensor) -> torch.Tensor:
    """(B, N, h, w) depths on bin centres -> (B, N, D, h, w) logits whose softmax is one-hot there."""
    index = (depths - 1.5).round().long().clamp(0, 3)
    return torch.nn.functional.one_hot(index, 4).permute(0, 1, 4, 2, 3).float() * 60.0


def test_inner_depth_loss_is_zero_for_exact_relative_depth_and_without_foreground():
    depth = torch.tensor([[[[1.5, 2.5], [3.5, 4.5]]]])  # (1, 1, 2, 2)
    fg = torch.tensor([[[[1, 1], [2, 2]]]])
    assert inner_depth_loss(_logits_for(depth), depth, fg, BINS).item() == pytest.approx(0.0, abs=1e-6)
    # A constant offset inside an object is not penalised: only relative depth counts.
    near = torch.tensor([[[[1.5, 2.5], [1.5, 2.5]]]])
    assert inner_depth_loss(_logits_for(near + 1.0), near, fg, BINS).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(1, 1, 4, 2, 2, requires_grad=True)
    empty = inner_depth_loss(logits, depth, torch.zeros_like(fg), BINS)
    assert empty.item() == 0.0
    empty.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_inner_depth_loss_hand_computed():
    # One object over three cells; predicted expected depths 2.5, 2.5, 4.5 against LiDAR 2.5, 3.0, 3.5.
    depth = torch.tensor([[[[2.5, 3.0, 3.5, 0.0]]]])  # the last cell has no point
    fg = torch.tensor([[[[1, 1, 1, 1]]]])
    logits = _logits_for(torch.tensor([[[[2.5, 2.5, 4.5, 1.5]]]]))
    # errors |d_hat - d| = 0, 0.5, 1.0 -> reference cell 0 (d_hat_r = 2.5, d_r = 2.5)
    # e = (d_hat - 2.5) - (d - 2.5) = 0, -0.5, 1.0 -> (0 + 0.25 + 1) / 3 foreground cells
    expected = (0.0 + 0.25 + 1.0) / 3
    assert inner_depth_loss(logits, depth, fg, BINS).item() == pytest.approx(expected, rel=1e-5)


def test_inner_depth_loss_groups_by_sample_camera_and_box():
    # Two boxes in one camera, and the same box id in a second camera: three groups, each exact up
    # to its own offset, so the loss is 0; merging any two groups would make it positive.
    depth = torch.tensor([[[[2.5, 3.5, 1.5, 2.5]], [[3.5, 4.5, 0.0, 0.0]]]])  # (1, 2, 1, 4)
    fg = torch.tensor([[[[1, 1, 2, 2]], [[1, 1, 0, 0]]]])
    pred = torch.tensor([[[[1.5, 2.5, 3.5, 4.5]], [[1.5, 2.5, 1.5, 1.5]]]])
    assert inner_depth_loss(_logits_for(pred), depth, fg, BINS).item() == pytest.approx(0.0, abs=1e-6)
    merged = fg.clone()
    merged[0, 0, 0, 2:] = 1
    assert inner_depth_loss(_logits_for(pred), depth, merged, BINS).item() > 0.5


def test_inner_depth_gradient_does_not_flow_through_the_reference_cell():
    depth = torch.tensor([[[[2.5, 3.5]]]])
    fg = torch.tensor([[[[1, 1]]]])
    logits = torch.zeros(1, 1, 4, 1, 2, requires_grad=True)
    inner_depth_loss(logits, depth, fg, BINS).backward()
    # both cells predict 3.0: the first cell (error 0.5, lowest index) is the reference
    assert logits.grad[..., 0].abs().sum() == 0 and logits.grad[..., 1].abs().sum() > 0


def _coordinate_map(x_range=(-4.0, 4.0), y_range=(-6.0, 6.0), cell=0.5):
    xs = x_range[0] + (torch.arange(int((x_range[1] - x_range[0]) / cell)) + 0.5) * cell
    ys = y_range[0] + (torch.arange(int((y_range[1] - y_range[0]) / cell)) + 0.5) * cell
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    return torch.stack([gx, gy])[None].double(), (x_range[0], y_range[0], x_range[1], y_range[1])


def test_keypoints_on_a_coordinate_map_are_the_lattice_positions():
    bev, bev_range = _coordinate_map()
    boxes = [torch.tensor([[0.3, -1.2, 0.0, 2.0, 1.0, 1.5, 0.7], [1.0, 2.0, 0.0, 1.0, 0.6, 1.0, -2.0]], dtype=torch.float64)]
    points = sample_box_keypoints(bev, boxes, bev_range, lattice=5, enlarge=0.5)  # (K, 2, 25)
    expected = box_lattice_points(boxes[0], 5, 0.5).permute(0, 2, 1)
    torch.testing.assert_close(points, expected, rtol=0, atol=1e-9)
    # the lattice includes the enlarged footprint's corners: length 2 + 1, width 1 + 1
    corner = expected[0, :, 0]
    c, s = math.cos(0.7), math.sin(0.7)
    torch.testing.assert_close(corner, torch.tensor([0.3 + c * -1.5 - s * -1.0, -1.2 + s * -1.5 + c * -1.0], dtype=torch.float64))


def test_keypoints_off_the_map_are_zero():
    bev = torch.ones(1, 3, 8, 8)
    boxes = [torch.tensor([[30.0, 30.0, 0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])]
    points = sample_box_keypoints(bev, boxes, (-4.0, -4.0, 4.0, 4.0), lattice=3, enlarge=0.0)
    assert points[0].abs().max() == 0 and torch.allclose(points[1], torch.ones(3, 9))


def _bilinear_reference(bev, x, y, bev_range):
    """Sample (C, X, Y) at metric (x, y) from the definition: cell centres at min + (i + 0.5) * cell."""
    channels, nx, ny = bev.shape
    cell_x = (bev_range[2] - bev_range[0]) / nx
    cell_y = (bev_range[3] - bev_range[1]) / ny
    fx, fy = (x - bev_range[0]) / cell_x - 0.5, (y - bev_range[1]) / cell_y - 0.5
    i0, j0 = math.floor(fx), math.floor(fy)
    out = torch.zeros(channels, dtype=bev.dtype)
    for i, wx in ((i0, 1 - (fx - i0)), (i0 + 1, fx - i0)):
        for j, wy in ((j0, 1 - (fy - j0)), (j0 + 1, fy - j0)):
            if 0 <= i < nx and 0 <= j < ny:
                out += wx * wy * bev[:, i, j]
    return out


def test_batched_sampler_equals_a_per_box_loop():
    torch.manual_seed(0)
    bev = torch.randn(3, 4, 16, 12, dtype=torch.float64)
    bev_range = (-8.0, -6.0, 8.0, 6.0)
    boxes = [torch.cat([torch.rand(k, 2) * 14 - 7, torch.zeros(k, 1), torch.rand(k, 3) + 0.5, torch.rand(k, 1) * 6], 1).double()
             for k in (2, 0, 3)]
    points = sample_box_keypoints(bev, boxes, bev_range, lattice=4, enlarge=1.0)
    assert points.shape == (5, 4, 16)
    row = 0
    for b, sample_boxes in enumerate(boxes):
        for box in sample_boxes:
            lattice = box_lattice_points(box[None], 4, 1.0)[0]
            expected = torch.stack([_bilinear_reference(bev[b], float(x), float(y), bev_range) for x, y in lattice], 1)
            torch.testing.assert_close(points[row], expected, rtol=1e-9, atol=1e-9)
            row += 1


@pytest.mark.parametrize("scatter_backward", [True, False])
def test_sampler_values_and_gradient_equal_grid_sample(scatter_backward, monkeypatch):
    """The sparse bilinear matrix against torch's grid_sample (align_corners=False, zero padding),
    forward and backward (both backward forms: the index_add_ scatter and the transposed sparse
    product of large lattices), with keypoints partly off the map."""
    import mmdet3d.models.distillers.losses.tig as tig

    monkeypatch.setattr(tig, "_INDEX_ADD_MAX_ELEMENTS", 1 << 30 if scatter_backward else 0)
    torch.manual_seed(1)
    bev = torch.randn(2, 5, 10, 14, dtype=torch.float64, requires_grad=True)
    bev_range = (-5.0, -7.0, 5.0, 7.0)
    boxes = [torch.cat([torch.rand(k, 2) * 14 - 7, torch.zeros(k, 1), torch.rand(k, 3) + 0.5, torch.rand(k, 1) * 6], 1).double()
             for k in (3, 2)]
    weights = torch.randn(5, 5, 9, dtype=torch.float64)
    points = sample_box_keypoints(bev, boxes, bev_range, lattice=3, enlarge=1.0)
    (grad,) = torch.autograd.grad((points * weights).sum(), bev)
    grids = []
    for sample_boxes in boxes:
        xy = box_lattice_points(sample_boxes, 3, 1.0)  # (K_b, M, 2); grid x indexes Y, grid y indexes X
        grids.append(torch.stack([2 * (xy[..., 1] + 7.0) / 14.0 - 1, 2 * (xy[..., 0] + 5.0) / 10.0 - 1], -1))
    reference = torch.cat([F.grid_sample(bev[b:b + 1], g[None], align_corners=False)[0].permute(1, 0, 2)
                           for b, g in enumerate(grids)])  # (1, C, K_b, M) -> (K_b, C, M)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), bev)
    assert any((box_lattice_points(b, 3, 1.0)[..., 0].abs() > 5.0).any() for b in boxes)  # some off the map
    torch.testing.assert_close(points, reference, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-9)


def _relation_reference(ps, pt, channel: bool):
    total = 0.0
    for s, t in zip(ps, pt):
        gs, gt = (s @ s.T, t @ t.T) if channel else (s.T @ s, t.T @ t)
        rows = [((gs[r] / gs[r].norm() - gt[r] / gt[r].norm()) ** 2).sum() for r in range(gs.shape[0])]
        total += sum(rows) / len(rows)
    return total / len(ps)


@pytest.mark.parametrize("loss, channel", [(inter_keypoint_loss, False), (inter_channel_loss, True)])
def test_relation_losses(loss, channel):
    torch.manual_seed(0)
    ps, pt = torch.randn(3, 5, 7, dtype=torch.float64), torch.randn(3, 5, 7, dtype=torch.float64)
    assert loss(pt, pt).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(ps, pt).item() > 0
    assert loss(ps, pt).item() == pytest.approx(float(_relation_reference(ps, pt, channel)), rel=1e-10)
    # scale invariance per row: the Gram rows are L2-normalised
    assert loss(3.0 * ps, pt).item() == pytest.approx(loss(ps, pt).item(), rel=1e-10)
    empty = torch.zeros(0, 5, 7, requires_grad=True)
    value = loss(empty, torch.zeros(0, 5, 7))
    assert value.item() == 0.0
    value.backward()


def test_relation_loss_hand_computed():
    # One box, two keypoints with 2 channels: student points e1, e2 (orthogonal), teacher both e1.
    ps = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (K=1, C=2, M=2)
    pt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # keypoint Gram: student identity, teacher all-ones -> normalised rows (1,0),(0,1) vs (.707,.707)
    expected = 2 * ((1 - 0.5 ** 0.5) ** 2 + 0.5) / 2
    assert inter_keypoint_loss(ps, pt).item() == pytest.approx(expected, rel=1e-6)


def test_inter_keypoint_loss_equals_the_explicit_gram_matrices_with_zero_rows():
    from mmdet3d.models.distillers.losses import relation_loss
    from mmdet3d.models.distillers.losses.tig import _gram_row_loss

    torch.manual_seed(1)
    ps, pt = torch.randn(4, 6, 9, dtype=torch.float64), torch.randn(4, 3, 9, dtype=torch.float64)
    ps[0, :, 2] = 0  # a keypoint off the map in the student, in both, in the teacher only
    ps[1, :, 3] = 0
    pt[1, :, 3] = 0
    pt[2, :, 5] = 0
    explicit = relation_loss(ps.transpose(1, 2) @ ps, pt.transpose(1, 2) @ pt)
    assert inter_keypoint_loss(ps, pt).item() == pytest.approx(explicit.item(), rel=1e-9)
    assert _gram_row_loss(ps, pt).item() == pytest.approx(explicit.item(), rel=1e-9)  # the factorised form
    # Many keypoints and few channels (the paper's lattice 24 regime): the factorised path, same value.
    wide_s, wide_t = torch.randn(3, 2, 40, dtype=torch.float64), torch.randn(3, 3, 40, dtype=torch.float64)
    wide_s[0, :, 7] = 0
    explicit = relation_loss(wide_s.transpose(1, 2) @ wide_s, wide_t.transpose(1, 2) @ wide_t)
    assert inter_keypoint_loss(wide_s, wide_t).item() == pytest.approx(explicit.item(), rel=1e-9)


def test_inner_depth_loss_with_a_non_finite_logit_is_nan_not_an_error():
    depth = torch.tensor([[[[2.5, 3.5, 1.5]]]])
    fg = torch.tensor([[[[1, 1, 2]]]])
    logits = torch.zeros(1, 1, 4, 1, 3)
    logits[0, 0, 0, 0, 2] = float("nan")  # the only cell of box 2
    assert torch.isnan(inner_depth_loss(logits, depth, fg, BINS))  # the trainer then stops, naming the loss


def test_relation_losses_have_finite_gradients_with_keypoints_off_the_map():
    ps = torch.randn(2, 4, 6, requires_grad=True)
    pt = torch.randn(2, 4, 6)
    with torch.no_grad():
        ps[:, :, :2] = 0
        pt[:, :, 1:3] = 0
    from mmdet3d.models.distillers.losses.tig import _gram_row_loss

    for loss in (inter_keypoint_loss, inter_channel_loss, _gram_row_loss):
        ps.grad = None
        loss(ps, pt).backward()
        assert torch.isfinite(ps.grad).all(), loss.__name__


@pytest.mark.parametrize("zero_rows", [False, True])
def test_fused_gram_relation_loss_equals_the_autograd_graph(zero_rows):
    """``gram_relation_loss`` (the relation terms' fused forward/backward) against ``relation_loss``
    on explicit Gram matrices: value and student gradient, with zero rows (keypoints off the map,
    a dead channel) where ``F.normalize``'s eps branch applies."""
    from mmdet3d.models.distillers.losses import relation_loss
    from mmdet3d.models.distillers.losses.tig import gram_relation_loss

    torch.manual_seed(3)
    s, t = torch.randn(4, 6, 5, dtype=torch.float64), torch.randn(4, 6, 9, dtype=torch.float64)
    if zero_rows:
        s[0, 2] = 0
        s[1, :, 1] = 0
        s[3, 1] *= 1e-13  # a row of norm below eps, neither zero nor normalised
        t[2, 4] = 0
    s_ref, s_new = s.clone().requires_grad_(), s.clone().requires_grad_()
    expected = relation_loss(s_ref @ s_ref.transpose(1, 2), t @ t.transpose(1, 2))
    value = gram_relation_loss(s_new, t)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    (2.5 * expected).backward()
    (2.5 * value).backward()
    torch.testing.assert_close(s_new.grad, s_ref.grad, rtol=1e-9, atol=1e-9 * s_ref.grad.abs().max().item())
    if not zero_rows:  # away from the eps branch the analytic gradient is the numerical one too
        assert torch.autograd.gradcheck(lambda x: gram_relation_loss(x, t), (s.clone().requires_grad_(),))
    # a teacher that needs a gradient too takes the autograd graph: both gradients exist
    t_grad = t.clone().requires_grad_()
    gram_relation_loss(s.clone().requires_grad_(), t_grad).backward()
    assert t_grad.grad is not None and t_grad.grad.abs().sum() > 0


def test_registered_relation_losses_equal_the_functions_on_their_own_samples():
    """InterKeypointLoss / InterChannelLoss (one shared keypoint matrix, the adapter as a matmul,
    the fused relation loss) against the plain route: each map sampled on its own, the adapter
    ``nn.Conv1d`` called as a module, the relations on explicit Gram matrices. Values and the
    gradients of the student map and the adapter."""
    from mmdet3d.models.distillers.losses import InterChannelLoss, InterKeypointLoss, relation_loss

    torch.manual_seed(4)
    bev_range = (-8.0, -8.0, 8.0, 8.0)
    boxes = [torch.cat([torch.rand(k, 2) * 16 - 8, torch.zeros(k, 1), torch.rand(k, 3) + 1.0, torch.rand(k, 1) * 6], 1).double()
             for k in (3, 2)]
    fs = torch.randn(2, 6, 8, 8, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    context = {"bev_range": bev_range, "cache": {}}
    keypoint = InterKeypointLoss(lattice=3, weight=2.0)
    channel = InterChannelLoss(lattice=3, weight=3.0, student_channels=6, teacher_channels=5).double()
    batch = {"gt_bboxes_3d": boxes}
    value = keypoint({"decoder_out": fs}, {"decoder_out": ft}, batch, context) + \
        channel({"decoder_out": fs}, {"decoder_out": ft}, batch, context)
    grad_map, grad_adapter = torch.autograd.grad(value, (fs, channel.adapter.weight))

    ps = sample_box_keypoints(fs, boxes, bev_range, 3, 1.6)
    pt = sample_box_keypoints(ft, boxes, bev_range, 3, 1.6)
    adapted = channel.adapter(ps)
    expected = 2.0 * relation_loss(ps.transpose(1, 2) @ ps, pt.transpose(1, 2) @ pt) + \
        3.0 * relation_loss(adapted @ adapted.transpose(1, 2), pt @ pt.transpose(1, 2))
    expected_map, expected_adapter = torch.autograd.grad(expected, (fs, channel.adapter.weight))
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(grad_map, expected_map, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_adapter, expected_adapter, rtol=1e-8, atol=1e-10)
