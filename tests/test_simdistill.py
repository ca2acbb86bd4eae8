"""SimDistill (DESIGN.md 5.5): the simulated multi-modal student and its losses."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mmdet3d.core.gaussian import gaussian_radius
from mmdet3d.datasets.example_batches import add_depth_targets
from mmdet3d.models import build_model
from mmdet3d.models.builder import DISTILL_LOSSES, HEADS
from mmdet3d.models.distillers.losses import box_code_kd_loss, gt_heatmap_mask, gt_targets, quality_focal_kd_loss
from mmdet3d.models.losses import dense_depth_loss
from model_inputs import make_batch, tiny_model_cfg, tiny_simdistill_cfg

IMAGE = (32, 48)
EXTENT = 8.0  # a 20 x 20 grid of 0.8 m cells over [-8, 8]


def _student(compensation="DeformableBEVAttention"):
    torch.manual_seed(0)
    return build_model(tiny_simdistill_cfg(compensation, image_size=IMAGE, extent=EXTENT))


def _batch():
    batch = make_batch(batch_size=2, num_cams=2, image_size=IMAGE, num_boxes=(3, 1), extent=EXTENT, num_points=3000)
    return add_depth_targets(batch, downsample=8, dbound=[1.0, 12.0, 1.0])


def _head():
    cfg = tiny_model_cfg(image_size=IMAGE, extent=EXTENT)["heads"]["object"]
    return HEADS.build(cfg, in_channels=16)


@pytest.mark.parametrize("compensation", ["DeformableBEVAttention", "ModulatedDeformConvBEV"])
def test_student_has_two_separate_lifts_and_the_named_maps(compensation):
    student = _student(compensation).train()
    camera_lift, sim_lift = student.encoders["camera"]["vtransform"], student.encoders["sim_lidar"]["vtransform"]
    assert camera_lift is not sim_lift and type(student.encoders["sim_lidar"]["compensation"]).__name__ == compensation
    shared = {p.data_ptr() for p in camera_lift.parameters()} & {p.data_ptr() for p in sim_lift.parameters()}
    assert not shared and not student.reads_points
    batch = _batch()
    features = student.extract_features(batch)
    for name in ("camera_bev", "lidar_bev", "sim_camera_bev", "fused_bev", "decoder_out"):
        assert features[name].shape == (2, student.feature_channels[name], 20, 20), name
    assert features["depth_logits"].shape == features["sim_depth_logits"].shape == (2, 2, 11, 4, 6)
    # the sim lift feeds only the simulated-LiDAR branch: changing it leaves the camera BEV alone
    with torch.no_grad():
        sim_lift.depthnet.weight.add_(0.5)
    changed = student.extract_features(batch)
    torch.testing.assert_close(changed["camera_bev"], features["camera_bev"])
    assert not torch.allclose(changed["sim_camera_bev"], features["sim_camera_bev"])
    assert not torch.allclose(changed["lidar_bev"], features["lidar_bev"])


def test_student_features_follow_the_simdistill_graph():
    student = _student().eval()
    batch = _batch()
    with torch.no_grad():
        features = student.extract_features(batch)
        feats = student.extract_image_features(batch)
        l1, _ = student.encoders["sim_lidar"]["vtransform"](feats, batch)
        l1_prime = student.encoders["sim_lidar"]["compensation"](l1)
        l2, _ = student.encoders["camera"]["vtransform"](feats, batch)
        torch.testing.assert_close(features["sim_camera_bev"], l1_prime)
        torch.testing.assert_close(features["lidar_bev"], student.encoders["sim_lidar"]["adapter"]([l1_prime]))
        torch.testing.assert_close(features["fused_bev"], student.fuser([l1_prime, l2]))


def test_student_depth_loss_supervises_both_lifts():
    student = _student().train()
    batch = _batch()
    features, preds = student.forward_features(batch)
    losses = student.loss(batch, preds, features)
    expected = 3.0 * (dense_depth_loss(features["depth_logits"], batch["depth_map"], [1.0, 12.0, 1.0])
                      + dense_depth_loss(features["sim_depth_logits"], batch["depth_map"], [1.0, 12.0, 1.0]))
    assert losses["loss/depth/dense"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_lift_that_reads_lidar_makes_the_student_refused():
    cfg = tiny_simdistill_cfg(image_size=IMAGE, extent=EXTENT)
    cfg["encoders"]["sim_lidar"]["vtransform"].update(type="DepthLSSTransform", depth_channels=8)
    assert build_model(cfg).reads_points
    teacher = tiny_model_cfg(image_size=IMAGE, extent=EXTENT)
    with pytest.raises(ValueError, match="reads LiDAR"):
        build_model(dict(type="BEVDistiller", teacher=teacher, student=cfg, teacher_checkpoint=None))
    with pytest.raises(ValueError, match="sim_lidar"):
        bad = tiny_simdistill_cfg(image_size=IMAGE, extent=EXTENT)
        del bad["encoders"]["sim_lidar"]
        build_model(bad)


def _gaussian_reference(grid, centre, radius):
    """exp(-d^2 / 2 sigma^2) within the (2r+1)^2 window around ``centre``, sigma = (2r+1)/6."""
    sigma = (2 * radius + 1) / 6
    out = torch.zeros(grid)
    for i in range(grid[0]):
        for j in range(grid[1]):
            di, dj = i - centre[0], j - centre[1]
            if abs(di) <= radius and abs(dj) <= radius:
                out[i, j] = math.exp(-(di * di + dj * dj) / (2 * sigma * sigma))
    return out


def test_heatmap_mask_is_the_sum_over_classes_of_the_gaussian_gt_heatmaps():
    head = _head()
    car = torch.tensor([[0.3, -2.1, -1.0, 4.0, 1.8, 1.5, 0.4, 0.0, 0.0]])  # cell (10, 7) of 0.8 m cells from -8
    labels = torch.tensor([0])
    mask = gt_heatmap_mask(gt_targets(head, [car], [labels], (20, 20)))
    radius = max(2, int(gaussian_radius((1.8 / 0.8, 4.0 / 0.8), 0.1)))
    torch.testing.assert_close(mask[0], _gaussian_reference((20, 20), (10, 7), radius), atol=1e-6, rtol=0)
    # two cars on one cell: the maximum within a class; a car and a pedestrian: summed over classes
    two_cars = gt_heatmap_mask(gt_targets(head, [car.repeat(2, 1)], [torch.tensor([0, 0])], (20, 20)))
    assert two_cars[0, 10, 7].item() == pytest.approx(1.0)
    car_and_person = gt_heatmap_mask(gt_targets(head, [car.repeat(2, 1)], [torch.tensor([0, 8])], (20, 20)))
    assert car_and_person[0, 10, 7].item() == pytest.approx(2.0)
    # a sample without boxes gives an empty mask; the mask follows the grid it is drawn on
    empty = gt_heatmap_mask(gt_targets(head, [car[:0]], [labels[:0]], (10, 10)))
    assert empty.shape == (1, 10, 10) and empty.sum() == 0


def _named(maps=None, heads=None):
    named = dict(maps or {})
    if heads is not None:
        named["heatmaps"] = [t["heatmap"] for t in heads]
        named["box_codes"] = [{k: v for k, v in t.items() if k != "heatmap"} for t in heads]
    return named


def _loss(cfg, channels=2):
    cfg = dict(cfg)
    if DISTILL_LOSSES.get(cfg["type"]).needs_channels:
        cfg.update(student_channels=channels, teacher_channels=channels)
    return DISTILL_LOSSES.build(cfg)


def test_feature_mse_zero_hand_computed_and_student_only_gradient():
    loss = _loss(dict(type="FeatureMSELoss", name="fusion", weight=2.0))
    fs = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, -1.0]]]], requires_grad=True)  # (1, 2, 2, 2)
    ft = torch.zeros(1, 2, 2, 2, requires_grad=True)
    assert loss(_named({"fused_bev": ft}), _named({"fused_bev": ft}), {}, {}).item() == 0.0
    value = loss(_named({"fused_bev": fs}), _named({"fused_bev": ft}), {}, {})
    assert value.item() == pytest.approx(2.0 * (1 + 4 + 9 + 16 + 1) / 8)
    value.backward()
    assert fs.grad.abs().sum() > 0 and ft.grad is None
    with pytest.raises(ValueError, match="teacher's width"):
        DISTILL_LOSSES.build(dict(type="FeatureMSELoss", student_channels=2, teacher_channels=3))


def test_cross_modal_loss_is_masked_by_the_heatmap():
    head = _head()
    loss = _loss(dict(type="HeatmapMaskedMSELoss", weight=100.0))
    box = torch.tensor([[0.3, -2.1, -1.0, 4.0, 1.8, 1.5, 0.4, 0.0, 0.0]])
    batch = {"gt_bboxes_3d": [box], "gt_labels_3d": [torch.tensor([0])]}
    context = {"object_head": head, "cache": {}}
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(1, 2, 20, 20, generator=g, requires_grad=True)
    ft = torch.randn(1, 2, 20, 20, generator=g)
    mask = loss.heatmap((20, 20), batch, context)
    assert mask.shape == (1, 20, 20) and mask[0, 10, 7] == 1
    shown = loss.visual_masks(_named({"lidar_bev": fs}), _named({"lidar_bev": ft}), batch, context)
    torch.testing.assert_close(next(iter(shown.values())), mask)  # what tools/visualize.py draws
    reference = sum(((fs[0, c, i, j] - ft[0, c, i, j]) * mask[0, i, j]) ** 2
                    for c in range(2) for i in range(20) for j in range(20)) / (2 * 20 * 20)
    value = loss(_named({"lidar_bev": fs}), _named({"lidar_bev": ft}), batch, context)
    assert value.item() == pytest.approx(100.0 * reference.item(), rel=1e-5)
    # differences where H = 0 cost nothing
    far = ft.clone()
    far[..., mask[0] == 0] += 5.0
    assert loss(_named({"lidar_bev": far}), _named({"lidar_bev": ft}), batch, {"object_head": head}).item() == 0.0


def test_quality_focal_kd_by_hand_and_zero_for_equal_logits():
    # student logit 0 (p 0.5) against teacher probability 0.8: BCE = log 2, focal |0.5 - 0.8|^2
    s = torch.zeros(1, 1, 1, 1)
    assert quality_focal_kd_loss(s, torch.full((1, 1, 1, 1), 0.8)).item() == pytest.approx(0.09 * math.log(2), rel=1e-5)
    # summed over classes, averaged over cells: two classes on two cells
    s2, p2 = torch.zeros(1, 2, 1, 2), torch.tensor([[[[0.8, 0.5]], [[0.2, 0.5]]]])
    assert quality_focal_kd_loss(s2, p2).item() == pytest.approx(2 * 0.09 * math.log(2) / 2, rel=1e-5)
    loss = _loss(dict(type="QualityFocalKDLoss", weight=0.25))
    logits = torch.randn(2, 3, 4, 4)
    heads = [{"heatmap": logits}]
    # equal logits cost 0: the teacher is passed through one sigmoid (two would not give 0)
    assert loss(_named(heads=heads), _named(heads=heads), {}, {}).item() == pytest.approx(0.0, abs=1e-7)
    twice = quality_focal_kd_loss(logits, logits.sigmoid().sigmoid())
    assert twice.item() > 1e-3


def test_box_code_kd_at_gt_centres_only():
    head = _head()
    boxes = [torch.tensor([[0.3, -2.1, -1.0, 4.0, 1.8, 1.5, 0.4, 0.0, 0.0], [-4.5, 3.3, -1.0, 4.0, 1.8, 1.5, 0.0, 0.0, 0.0]]),
             torch.zeros(0, 9)]
    labels = [torch.tensor([0, 0]), torch.zeros(0, dtype=torch.long)]
    batch = {"gt_bboxes_3d": boxes, "gt_labels_3d": labels}

    def codes(value=0.0):
        return [{"reg": torch.full((2, 2, 20, 20), value), "height": torch.zeros(2, 1, 20, 20),
                 "dim": torch.zeros(2, 3, 20, 20), "rot": torch.zeros(2, 2, 20, 20), "vel": torch.zeros(2, 2, 20, 20)}
                for _ in range(2)]

    student, teacher = codes(), codes()
    for task in student:
        task["heatmap"] = torch.zeros(2, 5, 20, 20)
    for task in teacher:
        task["heatmap"] = torch.zeros(2, 5, 20, 20)
    loss = _loss(dict(type="BoxCodeKDLoss", weight=0.25))
    context = {"object_head": head}
    assert loss(_named(heads=student), _named(heads=teacher), batch, context).item() == 0.0
    # differences away from the two centres (cells (10, 7) and (4, 14)) and in the box-free sample cost nothing
    student[0]["reg"][0, :, 0, 0] = 3.0
    student[0]["reg"][1] = 3.0
    assert loss(_named(heads=student), _named(heads=teacher), batch, context).item() == 0.0
    # at a centre: reg differs by 0.05 (quadratic part: 0.5 d^2 / beta) and dim by 1 (linear: |d| - beta / 2)
    student[0]["reg"][0, 0, 10, 7] = 0.05
    student[0]["dim"][0, 1, 10, 7] = 1.0
    beta = 1.0 / 9.0
    expected = (0.5 * 0.05**2 / beta + (1.0 - 0.5 * beta)) / 2  # averaged over the task's two centres
    assert loss(_named(heads=student), _named(heads=teacher), batch, context).item() == pytest.approx(0.25 * expected, rel=1e-5)
    # code weights apply (vel has 0.2), and only the named groups count
    student[0]["vel"][0, 0, 4, 14] = 1.0
    expected_vel = expected + 0.2 * (1.0 - 0.5 * beta) / 2
    assert loss(_named(heads=student), _named(heads=teacher), batch, context).item() == pytest.approx(0.25 * expected_vel, rel=1e-5)
    reg_rot = _loss(dict(type="BoxCodeKDLoss", code_names=["reg", "rot"]))
    assert reg_rot(_named(heads=student), _named(heads=teacher), batch, context).item() == pytest.approx(0.5 * 0.05**2 / beta / 2, rel=1e-5)


def test_box_code_kd_function_without_centres_is_zero_with_a_gradient():
    s = torch.randn(1, 3, 4, 4, requires_grad=True)
    value = box_code_kd_loss(s, torch.zeros(1, 3, 4, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long),
                             torch.ones(3))
    assert value.item() == 0.0
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() == 0


def test_simdistill_distiller_reports_every_term_and_trains_every_student_parameter():
    teacher = tiny_model_cfg(image_size=IMAGE, extent=EXTENT, vtransform="DepthLSSTransform")
    losses = [dict(type="FeatureMSELoss", name="fusion", student="fused_bev", teacher="fused_bev"),
              dict(type="FeatureMSELoss", name="intra_modal", student="camera_bev", teacher="camera_bev"),
              dict(type="HeatmapMaskedMSELoss", name="cross_modal", weight=100.0),
              dict(type="QualityFocalKDLoss", weight=0.25), dict(type="BoxCodeKDLoss", weight=0.25)]
    torch.manual_seed(0)
    model = build_model(dict(type="BEVDistiller", teacher=teacher, student=tiny_simdistill_cfg(image_size=IMAGE, extent=EXTENT),
                             teacher_checkpoint=None, distill_losses=copy.deepcopy(losses))).train()
    assert model.teacher_heads_needed
    out = model(_batch())
    names = {f"loss/distill/{n}" for n in ("fusion", "intra_modal", "cross_modal", "pred_heatmap", "pred_box")}
    assert names <= set(out) and all(torch.isfinite(out[n]) and out[n] > 0 for n in names)
    sum(out.values()).backward()
    assert [n for n, p in model.student.named_parameters() if p.grad is None] == []
    assert all(p.grad is None for p in model.teacher.parameters())
