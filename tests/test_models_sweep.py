"""Every registered model component, built tiny: forward, backward, no NaN, declared widths.

A component registered without a case here fails ``test_every_registered_component_has_a_case``.
Fusion models are swept over each modality combination, fuser and decoder, with empty ground
truth in the batch; the shipped configs are swept in test_configs.py.
"""
import math

import pytest
import torch

from mmdet3d.models import FUSION_MODELS, LOSSES, build_model
from mmdet3d.models.lidar import import_spconv
from model_inputs import REGISTRIES, make_batch, tiny_model_cfg

BEV = (2, 8, 16, 12)  # (B, C, X, Y)


def assert_trainable(module, output):
    """Backward from ``output`` reaches every trainable parameter; values and gradients finite."""
    tensors = output if isinstance(output, (list, tuple)) else [output]
    for t in tensors:
        assert torch.isfinite(t).all()
    sum(t.float().square().mean() for t in tensors).backward()
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)


def case_resnet(build):
    m = build(dict(type="ResNet", depth=18, out_indices=[2, 3]))
    out = m(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in out] == m.out_channels == [256, 512]
    assert_trainable(m, out)


def case_tiny_resnet(build):
    m = build(dict(type="TinyResNet", base_channels=4, stage_blocks=[1, 1], out_indices=[0, 1]))
    out = m(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in out] == [(2, 4, 8, 8), (2, 8, 4, 4)] and m.out_channels == [4, 8]
    assert_trainable(m, out)


def case_generalized_resnet(build):
    m = build(dict(type="GeneralizedResNet", in_channels=8, blocks=[[1, 8, 2], [2, 16, 1]]))
    out = m(torch.randn(*BEV))
    assert [tuple(o.shape) for o in out] == [(2, 8, 8, 6), (2, 16, 8, 6)]
    assert_trainable(m, out)


def case_second(build):
    m = build(dict(type="SECOND", in_channels=8, out_channels=[8, 16], layer_nums=[1, 1], layer_strides=[1, 2]))
    out = m(torch.randn(*BEV))
    assert [tuple(o.shape) for o in out] == [(2, 8, 16, 12), (2, 16, 8, 6)]
    assert_trainable(m, out)


def case_generalized_lss_fpn(build):
    m = build(dict(type="GeneralizedLSSFPN", in_channels=[8, 16, 32], out_channels=12))
    out = m([torch.randn(2, 8, 16, 24), torch.randn(2, 16, 8, 12), torch.randn(2, 32, 4, 6)])
    assert [tuple(o.shape) for o in out] == [(2, 12, 16, 24), (2, 12, 8, 12)]
    assert_trainable(m, out)


def case_second_fpn(build):
    m = build(dict(type="SECONDFPN", in_channels=[8, 16], out_channels=[4, 6], upsample_strides=[0.5, 1]))
    out = m([torch.randn(2, 8, 16, 12), torch.randn(2, 16, 8, 6)])
    assert tuple(out.shape) == (2, 10, 8, 6) and m.out_channels == 10
    assert_trainable(m, out)


def case_lss_fpn(build):
    m = build(dict(type="LSSFPN", in_channels=[8, 16, 32], in_indices=[-1, 0], out_channels=12, scale_factor=2))
    out = m([torch.randn(2, 8, 16, 12), torch.randn(2, 16, 8, 6), torch.randn(2, 32, 4, 3)])
    assert tuple(out.shape) == (2, 12, 32, 24)
    assert_trainable(m, out)


def _vtransform_case(vtype, **extra):
    def case(build):
        batch = make_batch(batch_size=2, num_cams=2, image_size=(32, 48))
        m = build(dict(type=vtype, in_channels=8, out_channels=6, image_size=[32, 48], feature_size=[4, 6],
                       xbound=[-8.0, 8.0, 1.0], ybound=[-8.0, 8.0, 1.0], zbound=[-10.0, 10.0, 20.0],
                       dbound=[1.0, 9.0, 1.0], **extra))
        bev, extras = m(torch.randn(2, 2, 8, 4, 6), batch)
        assert tuple(bev.shape) == (2, m.out_channels, 16, 16)
        assert tuple(extras["depth_logits"].shape) == (2, 2, 8, 4, 6)
        assert_trainable(m, [bev, extras["depth_logits"]])
    return case


def case_voxelization(build):
    m = build(dict(type="Voxelization", voxel_size=[1.0, 1.0, 8.0], point_cloud_range=[-8, -8, -5, 8, 8, 3],
                   max_num_points=4, max_voxels=[100, 100]))
    points = [torch.tensor([[0.5, 0.5, 0.0, 1.0, 0.0], [0.6, 0.4, 0.0, 1.0, 0.0], [-3.5, 2.5, 1.0, 0.0, 0.0]]),
              torch.zeros(0, 5)]
    voxels, coords, num_points = m(points)
    assert tuple(voxels.shape) == (2, 4, 5) and num_points.tolist() == [2, 1]
    assert coords.tolist() == [[0, 0, 8, 8], [0, 0, 10, 4]]  # (b, z, y, x)


def case_dynamic_voxelization(build):
    m = build(dict(type="DynamicVoxelization", voxel_size=[1.0, 1.0, 8.0], point_cloud_range=[-8, -8, -5, 8, 8, 3]))
    points = [torch.tensor([[0.5, 0.5, 0.0, 1.0, 0.0], [9.0, 0.4, 0.0, 1.0, 0.0], [-3.5, 2.5, 1.0, 0.0, 0.0]]),
              torch.tensor([[0.5, 0.4, 0.0, 1.0, 0.1]])]
    kept, coords, sizes = m(points)
    assert sizes is None and kept[:, 0].tolist() == [0.5, -3.5, 0.5]  # the out-of-range point is dropped
    assert coords.tolist() == [[0, 0, 8, 8], [0, 0, 10, 4], [1, 0, 8, 8]]  # (b, z, y, x) per point


def case_dynamic_pillar_feature_net(build):
    m = build(dict(type="DynamicPillarFeatureNet", in_channels=5, feat_channels=[8, 16],
                   point_cloud_range=[-8, -8, -5, 8, 8, 3], voxel_size=[1.0, 1.0, 8.0]))
    points = torch.randn(7, 5)
    coords = torch.tensor([[0, 3, 2, 0], [1, 0, 0, 0], [0, 3, 2, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 3, 2, 0], [0, 1, 1, 0]])
    out, pillars = m(points, None, coords)
    assert tuple(out.shape) == (3, 16) and pillars.tolist() == [[0, 1, 1, 0], [0, 3, 2, 0], [1, 0, 0, 0]]
    assert_trainable(m, [out])


def case_pillar_feature_net(build):
    m = build(dict(type="PillarFeatureNet", in_channels=5, feat_channels=[8, 16], point_cloud_range=[-8, -8, -5, 8, 8, 3],
                   voxel_size=[1.0, 1.0, 8.0], with_distance=True))
    voxels, num_points = torch.randn(6, 4, 5), torch.tensor([1, 2, 3, 4, 4, 1])
    coords = torch.tensor([[0, x, x + 1, 0] for x in range(6)])
    out = m(voxels, num_points, coords)
    assert tuple(out.shape) == (6, 16) and m.out_channels == 16
    # Padded points do not change the result.
    padded = voxels.clone()
    padded[0, 1:] = 100.0
    torch.testing.assert_close(m.eval()(padded, num_points, coords), m(voxels, num_points, coords))
    m.train()
    assert_trainable(m, m(voxels, num_points, coords))


def case_point_pillars_scatter(build):
    m = build(dict(type="PointPillarsScatter", in_channels=3, output_shape=[4, 5]))
    features = torch.randn(2, 3, requires_grad=True)
    bev = m(features, torch.tensor([[0, 1, 2, 0], [1, 3, 4, 0]]), batch_size=2)
    assert tuple(bev.shape) == (2, 3, 4, 5)
    torch.testing.assert_close(bev[0, :, 1, 2], features[0])
    torch.testing.assert_close(bev[1, :, 3, 4], features[1])
    assert bev.count_nonzero() == features.count_nonzero()


def case_point_pillars_encoder(build):
    m = build(dict(type="PointPillarsEncoder", in_channels=5, pts_voxel_encoder=dict(
        type="PillarFeatureNet", feat_channels=[8], point_cloud_range=[-8, -8, -5, 8, 8, 3], voxel_size=[1.0, 2.0, 8.0])))
    assert m.pts_voxel_encoder.in_channels == 5 and m.pts_middle_encoder.output_shape == (16, 8)
    out = m(torch.randn(3, 4, 5), torch.tensor([4, 1, 2]), torch.tensor([[0, 0, 0, 0], [0, 15, 7, 0], [1, 3, 3, 0]]), 2)
    assert tuple(out.shape) == (2, 8, 16, 8)
    assert_trainable(m, out)


def case_sparse_encoder(build):
    try:
        import_spconv()
    except ImportError:
        with pytest.raises(ImportError, match="PointPillars"):
            build(dict(type="SparseEncoder", in_channels=5, sparse_shape=[16, 16, 9]))
        return
    m = build(dict(type="SparseEncoder", in_channels=5, sparse_shape=[16, 16, 9], output_channels=8,
                   encoder_channels=[[4], [8]], base_channels=4))
    out = m(torch.randn(3, 2, 5), torch.tensor([2, 1, 2]), torch.tensor([[0, 1, 1, 1], [0, 4, 5, 6], [1, 2, 3, 4]]), 2)
    assert out.shape[:2] == (2, m.out_channels)


def _fuser_case(ftype):
    def case(build):
        m = build(dict(type=ftype, in_channels=[4, 6], out_channels=8))
        out = m([torch.randn(2, 4, 16, 12), torch.randn(2, 6, 16, 12)])
        assert tuple(out.shape) == (2, 8, 16, 12)
        assert_trainable(m, out)
        with pytest.raises(ValueError, match="widths"):
            m([torch.randn(2, 6, 16, 12), torch.randn(2, 4, 16, 12)])
    return case


def case_center_head(build):
    m = build(dict(type="CenterHead", in_channels=8, object_classes=["car", "pedestrian"],
                   point_cloud_range=[-8, -8, -5, 8, 8, 3], tasks=[dict(class_names=["car"]), dict(class_names=["pedestrian"])],
                   share_conv_channel=8, head_conv=8, nms_type=None))
    preds = m(torch.randn(*BEV))
    assert tuple(preds[1]["heatmap"].shape) == (2, 1, 16, 12) and tuple(preds[0]["vel"].shape) == (2, 2, 16, 12)
    boxes = [torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0]]), torch.zeros(0, 9)]
    losses = m.loss(boxes, [torch.tensor([1]), torch.zeros(0, dtype=torch.long)], preds)
    assert sorted(losses) == ["bbox_task0", "bbox_task1", "heatmap_task0", "heatmap_task1"]
    assert losses["bbox_task0"] == 0 and losses["bbox_task1"] > 0
    assert_trainable(m, [sum(losses.values())])


def _bev_layer_case(ltype, **kwargs):
    def case(build):
        m = build(dict(type=ltype, in_channels=8, bev_size=BEV[2:], **kwargs))
        x = torch.randn(*BEV)
        out = m(x)
        assert tuple(out.shape) == BEV and m.out_channels == 8
        assert_trainable(m, out)
    return case


def _loss_case(ltype):
    def case(build):
        m = build(dict(type=ltype, loss_weight=2.0))
        pred = torch.rand(3, 4, requires_grad=True)
        loss = m(pred, (pred.detach() > 0.5).float())
        assert loss.ndim == 0 and loss > 0
        loss.backward()
        assert torch.isfinite(pred.grad).all()
    return case


def case_dense_depth_loss(build):
    m = build(dict(type="DenseDepthLoss", dbound=[1.0, 5.0, 1.0], loss_weight=2.0))
    logits = torch.zeros(1, 1, 4, 1, 3, requires_grad=True)
    depth = torch.tensor([[[[2.5, 0.0, 4.2]]]])  # cells in bins 1 and 3, one without a point
    loss = m(logits, depth)
    assert loss.item() == pytest.approx(2.0 * 4 * math.log(2.0))  # BCE(0.5) over 4 bins, mean of two cells
    loss.backward()
    assert logits.grad[..., 1].abs().sum() == 0 and logits.grad[0, 0, 1, 0, 0] < 0 and logits.grad[0, 0, 3, 0, 2] < 0


CASES = {
    "ResNet": case_resnet, "TinyResNet": case_tiny_resnet, "GeneralizedResNet": case_generalized_resnet,
    "SECOND": case_second, "GeneralizedLSSFPN": case_generalized_lss_fpn, "SECONDFPN": case_second_fpn,
    "LSSFPN": case_lss_fpn, "LSSTransform": _vtransform_case("LSSTransform"),
    "DepthLSSTransform": _vtransform_case("DepthLSSTransform", depth_channels=4),
    "DeformableBEVAttention": _bev_layer_case("DeformableBEVAttention", num_heads=2, num_points=3),
    "ModulatedDeformConvBEV": _bev_layer_case("ModulatedDeformConvBEV", num_layers=2),
    "Voxelization": case_voxelization, "PillarFeatureNet": case_pillar_feature_net,
    "DynamicVoxelization": case_dynamic_voxelization, "DynamicPillarFeatureNet": case_dynamic_pillar_feature_net,
    "PointPillarsScatter": case_point_pillars_scatter, "PointPillarsEncoder": case_point_pillars_encoder,
    "SparseEncoder": case_sparse_encoder, "ConvFuser": _fuser_case("ConvFuser"), "AddFuser": _fuser_case("AddFuser"),
    "CenterHead": case_center_head, "GaussianFocalLoss": _loss_case("GaussianFocalLoss"), "L1Loss": _loss_case("L1Loss"),
    "DenseDepthLoss": case_dense_depth_loss,
}


def shipped(registry):
    """Names registered by the library itself (tests may register toy components)."""
    return [name for name in registry.names if registry.get(name).__module__.startswith("mmdet3d.")]


REGISTERED = [(kind, name) for kind, registry in {**REGISTRIES, "loss": LOSSES}.items() for name in shipped(registry)]


def test_every_registered_component_has_a_case():
    missing = [f"{kind}:{name}" for kind, name in REGISTERED if name not in CASES]
    assert not missing, f"add a tiny case to tests/test_models_sweep.py for {missing}"
    # BEVFusion is swept below over modalities, fusers and decoders; SimDistillStudent, its subclass,
    # in tests/test_simdistill.py (both compensation layers) and tests/test_distill_students.py
    assert shipped(FUSION_MODELS) == ["BEVFusion", "SimDistillStudent"]


@pytest.mark.parametrize("kind, name", REGISTERED, ids=[f"{k}-{n}" for k, n in REGISTERED])
def test_component(kind, name):
    torch.manual_seed(0)
    registry = {**REGISTRIES, "loss": LOSSES}[kind]
    CASES[name](registry.build)


FUSION_SWEEP = {
    "camera+lidar-convfuser": dict(),
    "camera+lidar-addfuser-depthlss-lssfpn": dict(fuser="AddFuser", vtransform="DepthLSSTransform", decoder="GeneralizedResNet"),
    "camera-lss": dict(lidar=False, fuser=None),
    "camera-depthlss-fuser": dict(lidar=False, fuser="ConvFuser", vtransform="DepthLSSTransform"),
    "lidar-pointpillars": dict(camera=False, fuser=None),
    "camera+lidar-dynamic-pillars": dict(dynamic_pillars=True),
}


@pytest.mark.parametrize("name", list(FUSION_SWEEP))
def test_bevfusion_forward_backward_eval(name):
    torch.manual_seed(0)
    cfg = tiny_model_cfg(image_size=(32, 48), extent=8.0, **FUSION_SWEEP[name])
    model = build_model(cfg).train()
    batch = make_batch(batch_size=2, num_cams=2, image_size=(32, 48), num_boxes=(3, 0), extent=8.0, num_points=500)
    losses = model(batch)
    assert sorted(losses) == sorted(f"loss/object/{k}_task{t}" for k in ("heatmap", "bbox") for t in range(2))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    features = model.extract_features(batch)
    assert tuple(features["fused_bev"].shape[-2:]) == (20, 20)  # 16 m at 0.8 m
    if model.fuser is not None:
        assert model.fuser.in_channels == [e["vtransform"].out_channels if k == "camera" else e["backbone"].out_channels
                                           for k, e in model.encoders.items()]
    assert (features["camera_bev"] is None) == ("camera" not in model.encoders)
    assert (features["lidar_bev"] is None) == ("lidar" not in model.encoders)

    model.eval()
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2
    for result in results:
        assert result["boxes_3d"].shape[1] == 9 and torch.isfinite(result["boxes_3d"]).all()
        assert len(result["scores_3d"]) == len(result["labels_3d"]) == len(result["boxes_3d"])


def test_bevfusion_all_empty_ground_truth():
    model = build_model(tiny_model_cfg(image_size=(32, 48), extent=8.0)).train()
    batch = make_batch(batch_size=2, num_cams=2, image_size=(32, 48), num_boxes=(0,), extent=8.0, num_points=300)
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss/object/bbox_task0"] == 0
    sum(losses.values()).backward()


def test_bevfusion_config_errors_are_clear():
    cfg = tiny_model_cfg(fuser=None)
    with pytest.raises(ValueError, match="need a fuser"):
        build_model(cfg)
    cfg = tiny_model_cfg(camera=False, lidar=False, fuser=None)
    with pytest.raises(ValueError, match="encoders.camera and/or encoders.lidar"):
        build_model(cfg)
    cfg = tiny_model_cfg(extent=8.0, image_size=(32, 48))
    cfg["encoders"]["camera"]["vtransform"]["downsample"] = 2
    model = build_model(cfg)
    with pytest.raises(ValueError, match="BEV grids differ"):
        model.extract_features(make_batch(batch_size=1, num_cams=2, image_size=(32, 48), extent=8.0, num_points=100))
