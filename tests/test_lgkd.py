"""LiDAR-guided distillation (DESIGN.md 5.6): masks in the augmented BEV frame, losses."""
from __future__ import annotations

import math

import pytest
import torch

from mmdet3d.models.builder import DISTILL_LOSSES, VTRANSFORMS
from mmdet3d.models.distillers.losses import (box_footprint_mask, camera_view_loss, depth_kd_loss, lidar_occupancy_mask,
                                              reduce_bev_mask, sigmoid_kd_loss)
from model_inputs import make_batch, tiny_model_cfg

EXTENT = 8.0
RANGE = (-EXTENT, -EXTENT, EXTENT, EXTENT)  # 20 x 20 cells of 0.8 m
IMAGE = (32, 48)


def test_lidar_occupancy_by_hand_keyframe_only():
    points = torch.tensor([
        [0.1, 0.1, -1.0, 0.5, 0.0],    # cell (10, 10)
        [-7.9, 7.9, 0.0, 0.5, 0.0],    # cell (0, 19)
        [3.3, -2.5, 1.0, 0.5, 0.05],   # a sweep point: cell (14, 6) only without keyframe_only
        [9.0, 0.0, 0.0, 0.5, 0.0],     # off the grid
    ])
    mask = lidar_occupancy_mask([points], RANGE, (20, 20))
    assert mask.shape == (1, 20, 20) and mask.sum() == 2 and mask[0, 10, 10] and mask[0, 0, 19]
    with_sweeps = lidar_occupancy_mask([points], RANGE, (20, 20), keyframe_only=False)
    assert with_sweeps.sum() == 3 and with_sweeps[0, 14, 6]
    coarse = lidar_occupancy_mask([points, points[:1]], RANGE, (10, 10))  # each sample its own points
    assert coarse.shape == (2, 10, 10) and coarse[0].sum() == 2 and coarse[1].sum() == 1


def test_box_footprint_mask_matches_a_cell_by_cell_reference():
    boxes = [torch.tensor([[0.0, 0.0, -1.0, 4.0, 1.8, 1.5, 0.6, 0.0, 0.0], [-5.0, 4.0, 3.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]),
             torch.zeros(0, 9)]
    mask = box_footprint_mask(boxes, RANGE, (20, 20))
    expected = torch.zeros(2, 20, 20, dtype=torch.bool)
    for i in range(20):
        for j in range(20):
            x, y = -8.0 + (i + 0.5) * 0.8, -8.0 + (j + 0.5) * 0.8
            for bx, by, _, length, width, _, yaw, _, _ in boxes[0].tolist():
                lx = (x - bx) * math.cos(yaw) + (y - by) * math.sin(yaw)
                ly = -(x - bx) * math.sin(yaw) + (y - by) * math.cos(yaw)
                expected[0, i, j] |= abs(lx) <= length / 2 and abs(ly) <= width / 2
    assert torch.equal(mask, expected) and mask[0].sum() > 8  # box heights and z play no part


def test_reduce_bev_mask_keeps_any_covered_cell():
    fine = torch.zeros(1, 2, 4, 6, dtype=torch.bool)
    fine[0, 0, 1, 5] = True
    fine[0, 1, 2, 0] = fine[0, 1, 3, 1] = True
    coarse = reduce_bev_mask(fine, (2, 3))
    assert coarse.shape == (1, 2, 2, 3)
    assert coarse[0, 0].nonzero().tolist() == [[0, 2]] and coarse[0, 1].nonzero().tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="does not reduce"):
        reduce_bev_mask(fine, (3, 3))


def test_camera_view_loss_by_hand():
    s = torch.zeros(1, 2, 2, 2)
    t = torch.zeros(1, 2, 2, 2)
    s[0, :, 0, 0] = 1.0   # error 2 (summed over channels) in cell (0, 0)
    s[0, 0, 1, 1] = 2.0   # error 4 in cell (1, 1)
    masks = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = masks[0, 0, 0, 1] = True  # camera 0: (0, 0), (0, 1) -> 2 / (2 cells * 2 channels)
    masks[0, 1, :, :] = True                        # camera 1: all cells -> 6 / (4 * 2); camera 2: none -> 0
    assert camera_view_loss(s, t, masks).item() == pytest.approx(2 / 4 + 6 / 8)


def _lift():
    vt = dict(tiny_model_cfg(image_size=IMAGE, extent=EXTENT)["encoders"]["camera"]["vtransform"])
    return VTRANSFORMS.build(dict(vt, xbound=[-EXTENT, EXTENT, 0.4], ybound=[-EXTENT, EXTENT, 0.4], downsample=2),
                             in_channels=8)


def _lidar_guided(**kwargs):
    return DISTILL_LOSSES.build(dict(type="LiDARGuidedFeatureLoss", student_channels=kwargs.pop("student_channels", 3),
                                     teacher_channels=3, **kwargs))


def _mirror_y(batch: dict) -> dict:
    """The same scene with the BEV augmentation extended by a mirror y -> -y (as RandomFlip3D)."""
    flip = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))
    out = dict(batch)
    out["points"] = [p * torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0]) for p in batch["points"]]
    boxes = []
    for b in batch["gt_bboxes_3d"]:
        b = b.clone()
        b[:, 1], b[:, 6], b[:, 8] = -b[:, 1], -b[:, 6], -b[:, 8]
        boxes.append(b)
    out["gt_bboxes_3d"] = boxes
    out["lidar_aug_matrix"] = flip @ batch["lidar_aug_matrix"]
    return out


def _rotate_90(batch: dict) -> dict:
    """The BEV augmentation extended by a 90-degree turn about z: (x, y) -> (-y, x)."""
    turn = torch.tensor([[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    out = dict(batch)
    out["points"] = [torch.cat([p[:, :3] @ turn[:3, :3].T, p[:, 3:]], dim=1) for p in batch["points"]]
    boxes = []
    for b in batch["gt_bboxes_3d"]:
        b = b.clone()
        b[:, :2] = b[:, :2] @ turn[:2, :2].T
        b[:, 7:9] = b[:, 7:9] @ turn[:2, :2].T
        b[:, 6] = b[:, 6] + math.pi / 2
        boxes.append(b)
    out["gt_bboxes_3d"] = boxes
    out["lidar_aug_matrix"] = turn @ batch["lidar_aug_matrix"]
    return out


@pytest.mark.parametrize("foreground", ["lidar", "boxes"])
@pytest.mark.parametrize("augment, move", [(_mirror_y, lambda m: m.flip(-1)), (_rotate_90, lambda m: m.transpose(-1, -2).flip(-2))])
def test_lgkd_masks_follow_the_bev_augmentation(foreground, augment, move):
    """A mirrored (or turned) batch gives the mirrored (turned) masks, every camera included."""
    lift = _lift()
    batch = make_batch(batch_size=2, num_cams=6, image_size=IMAGE, num_boxes=(3, 2), extent=EXTENT, num_points=300, seed=3)
    loss = _lidar_guided(foreground=foreground)
    context = {"bev_range": RANGE, "frustum_bev_masks": lift.frustum_bev_masks}
    teacher = torch.rand(2, 3, 20, 20) + 0.1
    fg, views, distilled = loss.view_masks({"fused_bev": teacher}, batch, context)
    moved = loss.view_masks({"fused_bev": move(teacher)}, augment(batch), context)
    assert fg.shape == (2, 20, 20) and views.shape == distilled.shape == (2, 6, 20, 20)  # all six cameras
    for name, mask, other in zip(("foreground", "cameras", "distilled"), (fg, views, distilled), moved):
        assert mask.dtype == torch.bool and mask.any(), name
        assert torch.equal(other, move(mask)), name
    # every camera's footprint is its own: the six cover different cells, together the surround
    assert all(views[b, v].any() for b in range(2) for v in range(6))
    assert len({tuple(views[0, v].flatten().tolist()) for v in range(6)}) == 6
    assert views.any(dim=1)[0].float().mean() > 0.3
    shown = loss.visual_masks({}, {"fused_bev": teacher}, batch, context)  # what tools/visualize.py draws
    assert [tuple(m.shape) for m in shown.values()] == [(2, 20, 20)] * 3
    torch.testing.assert_close(list(shown.values())[1], views.float().mean(dim=1))


def test_lidar_guided_feature_loss_values_adapter_and_gradients():
    lift = _lift()
    batch = make_batch(batch_size=1, num_cams=2, image_size=IMAGE, num_boxes=(2,), extent=EXTENT, num_points=200, seed=1)
    context = {"bev_range": RANGE, "frustum_bev_masks": lift.frustum_bev_masks}
    g = torch.Generator().manual_seed(0)
    ft = torch.randn(1, 3, 20, 20, generator=g)
    ft[:, :, :, :4] = 0  # teacher cells that are 0 are not distilled
    fs = torch.randn(1, 3, 20, 20, generator=g, requires_grad=True)
    loss = _lidar_guided(weight=2.0)
    assert loss({"fused_bev": ft.clone()}, {"fused_bev": ft}, batch, context).item() == 0.0
    value = loss({"fused_bev": fs}, {"fused_bev": ft}, batch, context)
    fg = lidar_occupancy_mask(batch["points"], RANGE, (20, 20))[0]
    views = reduce_bev_mask(lift.frustum_bev_masks(batch), (20, 20))[0]
    expected = 0.0
    for v in range(2):
        cells = [(i, j) for i in range(20) for j in range(20) if fg[i, j] and views[v, i, j] and ft[0, :, i, j].abs().sum() > 0]
        assert cells and all(j >= 4 for _, j in cells)
        expected += sum(float(((fs.detach()[0, :, i, j] - ft[0, :, i, j]) ** 2).sum()) for i, j in cells) / (3 * len(cells))
    assert value.item() == pytest.approx(2.0 * expected, rel=1e-5)
    value.backward()
    assert fs.grad.abs().sum() > 0
    assert fs.grad[0, :, :, :4].abs().sum() == 0  # nothing where the teacher map is 0
    # a wider teacher: the student goes through a 1x1 adapter to the teacher's width
    wide = DISTILL_LOSSES.build(dict(type="LiDARGuidedFeatureLoss", student_channels=2, teacher_channels=3))
    assert isinstance(wide.adapter, torch.nn.Conv2d) and isinstance(loss.adapter, torch.nn.Identity)
    wide({"fused_bev": fs[:, :2]}, {"fused_bev": ft}, batch, context).backward()
    assert wide.adapter.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="foreground"):
        _lidar_guided(foreground="cars")


def test_depth_kd_by_hand_zero_and_only_on_lidar_hits():
    t_logits = torch.tensor([math.log(3.0), 0.0])
    s_logits = torch.zeros(2)
    for temperature in (1.0, 1.25):
        pt = torch.softmax(t_logits / temperature, 0)
        expected = temperature**2 * float((pt * (pt.log() - math.log(0.5))).sum())
        s = s_logits.view(1, 1, 2, 1, 1).repeat(1, 1, 1, 1, 2)
        t = t_logits.view(1, 1, 2, 1, 1).repeat(1, 1, 1, 1, 2)
        hit = torch.tensor([[[[True, False]]]])
        s[0, 0, :, 0, 1] = 5.0  # a pixel without a LiDAR point: not distilled
        assert depth_kd_loss(s, t, hit, temperature).item() == pytest.approx(expected, rel=1e-5)
    # the temperature divides the logits: T = 1.25 differs from dividing the probabilities
    assert depth_kd_loss(s, t, hit, 1.25).item() != pytest.approx(depth_kd_loss(s, t, hit, 1.0).item(), rel=1e-3)
    logits = torch.randn(2, 3, 5, 4, 6)
    assert depth_kd_loss(logits, logits, logits[:, :, 0] > 0).item() == pytest.approx(0.0, abs=1e-6)
    assert depth_kd_loss(logits, logits + 1, torch.zeros(2, 3, 4, 6, dtype=torch.bool)).item() == 0.0


def test_depth_kd_module_reads_the_depth_map_and_sends_gradient_to_the_student_only():
    loss = DISTILL_LOSSES.build(dict(type="DepthKDLoss"))
    s = torch.randn(1, 2, 4, 3, 5, requires_grad=True)
    t = torch.randn(1, 2, 4, 3, 5, requires_grad=True)
    depth_map = torch.zeros(1, 2, 3, 5)
    depth_map[0, 1, 2, 3] = 7.0
    loss({"depth_logits": s}, {"depth_logits": t}, {"depth_map": depth_map}, {}).backward()
    assert t.grad is None and s.grad[0, 1, :, 2, 3].abs().sum() > 0
    elsewhere = s.grad.clone()
    elsewhere[0, 1, :, 2, 3] = 0
    assert elsewhere.abs().sum() == 0  # only the hit pixel
    with pytest.raises(ValueError, match="share bins"):
        loss({"depth_logits": s}, {"depth_logits": t[:, :, :3]}, {"depth_map": depth_map}, {})


def test_sigmoid_kd_by_hand_and_one_class_tasks_contribute():
    p = 0.8
    s, t = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), math.log(p / (1 - p)))
    expected = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert sigmoid_kd_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    # a one-class task: a softmax over its classes would be 1 in both and give exactly 0
    assert torch.softmax(s, dim=1).equal(torch.softmax(t, dim=1)) and sigmoid_kd_loss(s, t).item() > 0
    logits = torch.randn(2, 3, 4, 4)
    assert sigmoid_kd_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    loss = DISTILL_LOSSES.build(dict(type="SigmoidHeatmapKDLoss", weight=0.25))
    student = [torch.zeros(1, 1, 1, 1, requires_grad=True), torch.zeros(1, 2, 1, 1, requires_grad=True)]
    teacher = [t, torch.cat([t, -t], dim=1)]
    value = loss({"heatmaps": student}, {"heatmaps": teacher}, {}, {})
    assert value.item() == pytest.approx(0.25 * (expected + 2 * expected / 1), rel=1e-5)
    value.backward()
    assert student[0].grad.abs().sum() > 0
