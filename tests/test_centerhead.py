"""CenterHead: Gaussian targets, box code round trip, losses (golden values, analytic cases)."""
import math

import pytest
import torch

from mmdet3d.core.bbox.center_point_coder import CenterPointBoxCoder
from mmdet3d.core.gaussian import draw_heatmap_gaussian, gaussian_radius
from mmdet3d.models.heads import CenterHead
from mmdet3d.models.losses import GaussianFocalLoss, L1Loss
from model_inputs import perfect_predictions

CLASSES = ["car", "truck", "pedestrian", "barrier"]
PC_RANGE = [-12.8, -12.8, -5.0, 12.8, 12.8, 3.0]


def make_head(**kwargs):
    cfg = dict(
        in_channels=8,
        tasks=[dict(class_names=["car"]), dict(class_names=["truck", "pedestrian"]), dict(class_names=["barrier"])],
        object_classes=CLASSES,
        point_cloud_range=PC_RANGE,
        share_conv_channel=8,
        head_conv=8,
        code_weights=[1, 1, 1, 1, 1, 1, 1, 1, 0.2, 0.2],
        nms_type=None,
        score_threshold=0.99,
    )
    cfg.update(kwargs)
    return CenterHead(**cfg)


GT_BOXES = torch.tensor([
    [1.30, 2.70, 0.50, 4.50, 2.00, 1.60, 0.30, 1.00, -0.50],
    [-5.10, 4.20, 0.10, 0.60, 0.70, 1.80, -2.00, 0.00, 0.00],
    [7.90, -9.30, 1.20, 10.0, 2.80, 3.50, 3.00, 4.00, 2.00],
    [-10.5, -3.30, 0.40, 0.40, 2.00, 1.00, -3.10, 0.00, 0.00],
])
GT_LABELS = torch.tensor([0, 2, 1, 3])


def test_gaussian_radius_golden():
    # CenterPoint's radius: the smallest of three quadratic roots, divided by 2 (not 2a).
    assert gaussian_radius((10, 10), 0.1) == pytest.approx((-4 + math.sqrt(160)) / 2)
    assert gaussian_radius((4, 2), 0.1) == pytest.approx(1.2)
    assert gaussian_radius((4, 2), 0.1) == pytest.approx(gaussian_radius((2, 4), 0.1))


def test_draw_heatmap_gaussian_peak_shape_and_clipping():
    heatmap = torch.zeros(9, 12)
    draw_heatmap_gaussian(heatmap, (4, 3), 2)  # (col, row)
    assert heatmap[3, 4] == 1.0
    assert heatmap.argmax() == 3 * 12 + 4
    sigma = 5 / 6
    assert heatmap[3, 6].item() == pytest.approx(math.exp(-4 / (2 * sigma**2)), rel=1e-6)
    assert heatmap[5, 4].item() == pytest.approx(heatmap[3, 6].item())
    assert heatmap[1:6, 2:7].count_nonzero() == 25 and heatmap.count_nonzero() == 25
    # Keeps the maximum of overlapping Gaussians, and clips at the border.
    draw_heatmap_gaussian(heatmap, (0, 0), 2, k=0.5)
    assert heatmap[0, 0] == 0.5 and heatmap[3, 4] == 1.0
    assert heatmap[0:3, 0:3].count_nonzero() == 9


def test_heatmap_targets_peak_and_radius():
    head = make_head()
    grid = (32, 32)  # 0.8 m cells
    targets = head.get_targets_single(GT_BOXES, GT_LABELS, grid)
    heatmap, cells, codes = targets[0]  # task 0: car
    assert heatmap.shape == (1, 32, 32) and cells.tolist() == [[17, 19]]  # floor((1.3 + 12.8) / 0.8), ...
    assert heatmap[0, 17, 19] == 1.0 and heatmap.eq(1).sum() == 1
    radius = max(2, int(gaussian_radius((2.0 / 0.8, 4.5 / 0.8), 0.1)))
    xs, ys = heatmap[0].nonzero(as_tuple=True)
    assert (xs - 17).abs().max() == radius and (ys - 19).abs().max() == radius
    truck_ped = targets[1][0]
    assert truck_ped.shape == (2, 32, 32)
    assert truck_ped[0, 25, 4] == 1.0  # truck (7.9, -9.3) -> class 0 of task 1
    assert truck_ped[1, 9, 21] == 1.0  # pedestrian (-5.1, 4.2) -> class 1 of task 1
    assert len(targets[2][1]) == 1


def test_boxes_outside_grid_and_unknown_labels_are_dropped():
    head = make_head()
    boxes = torch.cat([GT_BOXES[:1], GT_BOXES[:1] + torch.tensor([20.0, 0, 0, 0, 0, 0, 0, 0, 0])])
    targets = head.get_targets_single(boxes, torch.tensor([0, 0]), (32, 32))
    assert len(targets[0][1]) == 1
    targets = head.get_targets_single(GT_BOXES[:2], torch.tensor([-1, 0]), (32, 32))
    assert len(targets[0][1]) == 1 and len(targets[1][1]) == 0


def assert_same_boxes(result, boxes, labels):
    assert len(result["boxes_3d"]) == len(boxes)
    order = torch.cdist(boxes[:, :2], result["boxes_3d"][:, :2]).argmin(dim=1)
    decoded = result["boxes_3d"][order]
    torch.testing.assert_close(decoded[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-4, rtol=1e-4)
    yaw_error = torch.atan2((decoded[:, 6] - boxes[:, 6]).sin(), (decoded[:, 6] - boxes[:, 6]).cos())
    assert yaw_error.abs().max() < 1e-4
    assert result["labels_3d"][order].tolist() == labels.tolist()
    assert (result["scores_3d"] > 0.99).all()


def test_encode_decode_round_trip_through_get_bboxes():
    head = make_head()
    grid = (32, 32)
    preds = perfect_predictions(head, [GT_BOXES] * 2, [GT_LABELS] * 2, grid)
    results = head.get_bboxes(preds)
    assert len(results) == 2
    for result in results:
        assert result["boxes_3d"].shape[1] == 9
        assert_same_boxes(result, GT_BOXES, GT_LABELS)
    # Perfect box codes give exactly zero regression loss.
    losses = head.loss([GT_BOXES, GT_BOXES], [GT_LABELS, GT_LABELS], preds)
    for t in range(3):
        assert losses[f"bbox_task{t}"].item() == pytest.approx(0.0, abs=1e-6)


def test_round_trip_on_non_square_grid():
    head = make_head(point_cloud_range=[-12.8, -25.6, -5.0, 12.8, 25.6, 3.0])
    grid = (32, 80)
    result = head.get_bboxes(perfect_predictions(head, [GT_BOXES], [GT_LABELS], grid))[0]
    assert_same_boxes(result, GT_BOXES, GT_LABELS)


def test_round_trip_with_circle_nms_removes_gaussian_neighbours():
    # Every heatmap cell above 0.1 decodes to a box; circle NMS (4 m, as a squared radius 16)
    # keeps only the peaks, as the GT centres are more than 6 m apart.
    head = make_head(nms_type="circle", nms_radius=16.0, score_threshold=0.1)
    preds = perfect_predictions(head, [GT_BOXES], [GT_LABELS], (32, 32))
    assert head.decode_task(preds[0], 0)[0]["boxes_3d"].shape[0] == 1
    without_nms = make_head(score_threshold=0.1).get_bboxes(preds)[0]
    assert len(without_nms["boxes_3d"]) > 4 * 5
    for t in range(3):  # each task's detections come highest score first, tasks in order
        task_scores = without_nms["scores_3d"][without_nms["labels_3d"] == [0, 1, 3][t]]
        assert len(task_scores) > 5 and (task_scores[:-1] >= task_scores[1:]).all() and task_scores[1] < task_scores[0]
    assert_same_boxes(head.get_bboxes(preds)[0], GT_BOXES, GT_LABELS)


def test_post_center_range_and_score_threshold_filter():
    head = make_head(post_center_range=[0.0, -20.0, -5.0, 20.0, 20.0, 5.0])
    result = head.get_bboxes(perfect_predictions(head, [GT_BOXES], [GT_LABELS], (32, 32)))[0]
    keep = GT_BOXES[:, 0] >= 0
    assert_same_boxes(result, GT_BOXES[keep], GT_LABELS[keep])


def test_coder_round_trip():
    coder = CenterPointBoxCoder(PC_RANGE)
    cells, codes = coder.encode(GT_BOXES, (64, 32))
    boxes = coder.decode(codes, cells, (64, 32))
    torch.testing.assert_close(boxes[:, :6], GT_BOXES[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(boxes[:, 7:], GT_BOXES[:, 7:])
    torch.testing.assert_close(codes[:, 6], GT_BOXES[:, 6].sin())


def test_gaussian_focal_loss_golden_value():
    torch.manual_seed(0)
    pred = torch.rand(2, 3, 4, 5).clamp(1e-4, 1 - 1e-4)
    target = torch.rand(2, 3, 4, 5) * 0.9
    target[0, 1, 2, 3] = target[1, 0, 0, 0] = 1.0
    loss = GaussianFocalLoss(reduction="mean")(pred, target, avg_factor=2.0)
    pos = target == 1
    expected = (-(pred.log()) * (1 - pred) ** 2)[pos].sum() + (-(1 - pred).log() * pred**2 * (1 - target) ** 4)[~pos].sum()
    assert loss.item() == pytest.approx(expected.item() / 2, rel=1e-5)
    assert loss.item() == pytest.approx(8.41120, abs=1e-4)
    # A perfect peak costs nothing; a cell with target 0 and p -> 0 costs nothing.
    assert GaussianFocalLoss()(torch.tensor([1.0 - 1e-7, 1e-7]), torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_l1_loss_weights_and_zero_on_perfect():
    pred = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    target = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    weight = torch.tensor([[1.0, 1.0], [1.0, 0.5]])
    assert L1Loss(loss_weight=0.25)(pred, target, weight, avg_factor=2).item() == pytest.approx(0.25 * 2.0 / 2)
    assert L1Loss()(pred, pred.clone()).item() == 0.0


def test_loss_with_empty_ground_truth_is_finite_and_differentiable():
    head = make_head()
    x = torch.randn(2, 8, 32, 32, requires_grad=True)
    losses = head.loss([torch.zeros(0, 9), torch.zeros(0, 9)], [torch.zeros(0, dtype=torch.long)] * 2, head(x))
    total = sum(losses.values())
    assert torch.isfinite(total)
    assert all(losses[f"bbox_task{t}"].item() == 0.0 for t in range(3))
    total.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def slow_centerhead_loss(head, boxes_per_sample, labels_per_sample, preds, grid):
    """``CenterHead.loss`` by its definition, one cell and one object at a time, in float64.

    Heatmap: class k of a task is the maximum over its objects of ``exp(-(di^2 + dj^2) / (2 sigma^2))``
    within ``r = max(min_radius, int(gaussian_radius((dy, dx) in cells)))`` cells of the centre cell,
    ``sigma = (2r + 1) / 6``; the Gaussian focal loss (alpha 2, gamma 4) of the clamped sigmoid is
    summed over cells and divided by the number of centres. Box: the code-weighted L1 between the
    predicted and the true code ``(u - i, v - j, z, log dx, log dy, log dz, sin yaw, cos yaw, vx, vy)``
    at each centre cell, summed, divided by the number of objects (+1e-4) and weighted 0.25.
    """
    num_x, num_y = grid
    cell_x, cell_y = (PC_RANGE[3] - PC_RANGE[0]) / num_x, (PC_RANGE[4] - PC_RANGE[1]) / num_y
    losses = {}
    for t, names in enumerate(head.task_classes):
        focal, centres, l1, objects = 0.0, 0, 0.0, 0
        for b, (boxes, labels) in enumerate(zip(boxes_per_sample, labels_per_sample)):
            found = []
            for box, label in zip(boxes.tolist(), labels.tolist()):
                u, v = (box[0] - PC_RANGE[0]) / cell_x, (box[1] - PC_RANGE[1]) / cell_y
                if 0 <= label < len(CLASSES) and CLASSES[label] in names and 0 <= u < num_x and 0 <= v < num_y:
                    radius = max(head.min_radius, int(gaussian_radius((box[4] / cell_y, box[3] / cell_x), head.gaussian_overlap)))
                    found.append((names.index(CLASSES[label]), math.floor(u), math.floor(v), u, v, radius, box))
            for k in range(len(names)):
                for i in range(num_x):
                    for j in range(num_y):
                        target = 0.0
                        for cls, ci, cj, _, _, r, _ in found:
                            if cls == k and abs(i - ci) <= r and abs(j - cj) <= r:
                                sigma = (2 * r + 1) / 6
                                target = max(target, math.exp(-((i - ci) ** 2 + (j - cj) ** 2) / (2 * sigma**2)))
                        p = min(max(1 / (1 + math.exp(-float(preds[t]["heatmap"][b, k, i, j]))), 1e-4), 1 - 1e-4)
                        if target == 1.0:
                            focal += -math.log(p) * (1 - p) ** 2
                            centres += 1
                        else:
                            focal += -math.log(1 - p) * p**2 * (1 - target) ** 4
            for _, ci, cj, u, v, _, box in found:
                code = [u - ci, v - cj, box[2], *(math.log(s) for s in box[3:6]), math.sin(box[6]), math.cos(box[6]), box[7], box[8]]
                predicted = [float(preds[t][name][b, c, ci, cj]) for name in ("reg", "height", "dim", "rot", "vel")
                             for c in range(preds[t][name].shape[1])]
                l1 += sum(w * abs(p - c) for w, p, c in zip(head.code_weights.tolist(), predicted, code))
                objects += 1
        losses[f"heatmap_task{t}"] = focal / max(centres, 1)
        losses[f"bbox_task{t}"] = 0.25 * l1 / (objects + 1e-4)
    return losses


def test_loss_golden_totals_match_the_definition():
    head = make_head()
    grid = (16, 24)
    moved = GT_BOXES[[0, 2, 3]] + torch.tensor([2.5, -1.0, 0.1, 0.3, 0.2, 0.0, 0.7, -0.5, 1.0])
    outside = torch.tensor([[30.0, 0.0, 0.5, 4.0, 2.0, 1.6, 0.0, 0.0, 0.0]])
    boxes = [GT_BOXES, torch.cat([moved, outside, GT_BOXES[:1]])]
    labels = [GT_LABELS, torch.tensor([0, 1, 3, 0, -1])]
    generator = torch.Generator().manual_seed(0)
    preds = [{name: torch.randn(2, width, *grid, generator=generator) * 1.5 - (2.0 if name == "heatmap" else 0.0)
              for name, width in (("heatmap", len(names)), ("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))}
             for names in head.task_classes]
    losses = head.loss(boxes, labels, preds)
    expected = slow_centerhead_loss(head, boxes, labels, preds, grid)
    assert sorted(losses) == sorted(expected)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5), key
    assert sum(v.item() for v in losses.values()) == pytest.approx(sum(expected.values()), rel=1e-5)
