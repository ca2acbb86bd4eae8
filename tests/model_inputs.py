"""Model-test helpers: a tiny BEVFusion config, perfect head outputs, the registries to sweep, a one-thread fixture.

The random batches (camera rig, points, boxes) live in ``mmdet3d.datasets.example_batches``;
they are re-exported here for the tests.
"""
from __future__ import annotations

import pytest
import torch

from mmdet3d.core.bbox.center_point_coder import CODE_SIZES
from mmdet3d.datasets.example_batches import CLASSES, blob_batch, camera_rig, make_batch, random_boxes, random_points  # noqa: F401
from mmdet3d.models.builder import BACKBONES, BEV_LAYERS, FUSERS, HEADS, LIDAR_BACKBONES, NECKS, VOXELIZERS, VTRANSFORMS


@pytest.fixture
def one_thread():
    """Run a heavy test on one torch thread: the suite shares two cores between two workers, where
    oversubscribed threads are both slower and far less steady than one thread per process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model_cfg(camera: bool = True, lidar: bool = True, fuser: str | None = "ConvFuser",
                   vtransform: str = "LSSTransform", extent: float = 12.8, cell: float = 0.8,
                   image_size=(64, 96), decoder: str = "SECOND", dynamic_pillars: bool = False) -> dict:
    """A BEVFusion config small enough to train in a test: a (2 extent / cell)^2 BEV grid."""
    pc_range = [-extent, -extent, -5.0, extent, extent, 3.0]
    voxel_size = [cell, cell, 8.0]
    encoders = {"camera": None, "lidar": None}
    if camera:
        vt = dict(type=vtransform, out_channels=16, image_size=list(image_size),
                  feature_size=[image_size[0] // 8, image_size[1] // 8],
                  xbound=[-extent, extent, cell], ybound=[-extent, extent, cell], zbound=[-10.0, 10.0, 20.0],
                  dbound=[1.0, extent * 1.5, 1.0])
        if vtransform == "DepthLSSTransform":
            vt["depth_channels"] = 8
        encoders["camera"] = dict(
            backbone=dict(type="TinyResNet", base_channels=8, stage_blocks=[1, 1, 1], out_indices=[1, 2]),
            neck=dict(type="GeneralizedLSSFPN", out_channels=16),
            vtransform=vt,
        )
    if lidar and dynamic_pillars:
        encoders["lidar"] = dict(
            voxelize=dict(type="DynamicVoxelization", in_channels=5, point_cloud_range=pc_range, voxel_size=voxel_size),
            backbone=dict(type="PointPillarsEncoder", pts_voxel_encoder=dict(
                type="DynamicPillarFeatureNet", feat_channels=[16], point_cloud_range=pc_range, voxel_size=voxel_size)),
        )
    elif lidar:
        encoders["lidar"] = dict(
            voxelize=dict(type="Voxelization", in_channels=5, max_num_points=10, point_cloud_range=pc_range, voxel_size=voxel_size,
                          max_voxels=[4000, 4000]),
            backbone=dict(type="PointPillarsEncoder", pts_voxel_encoder=dict(
                type="PillarFeatureNet", feat_channels=[16], point_cloud_range=pc_range,
                voxel_size=voxel_size)),
        )
    if decoder == "SECOND":
        decoder_cfg = dict(backbone=dict(type="SECOND", out_channels=[16, 32], layer_nums=[1, 1], layer_strides=[1, 2]),
                           neck=dict(type="SECONDFPN", out_channels=[16, 16], upsample_strides=[1, 2]))
    else:
        decoder_cfg = dict(backbone=dict(type="GeneralizedResNet", blocks=[[1, 16, 1], [1, 32, 2]]),
                           neck=dict(type="LSSFPN", in_indices=[-1, 0], out_channels=16))
    return dict(
        type="BEVFusion",
        encoders=encoders,
        fuser=None if fuser is None else dict(type=fuser, out_channels=16),
        decoder=decoder_cfg,
        heads=dict(object=dict(
            type="CenterHead", object_classes=CLASSES, point_cloud_range=pc_range,
            tasks=[dict(class_names=["car", "truck", "construction_vehicle", "bus", "trailer"]),
                   dict(class_names=["barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone"])],
            share_conv_channel=16, head_conv=16, code_weights=[1.0] * 8 + [0.2, 0.2],
            nms_type=None, score_threshold=0.1, max_num=100,
        )),
    )


def perfect_predictions(head, boxes: list[torch.Tensor], labels: list[torch.Tensor], grid) -> list[dict[str, torch.Tensor]]:
    """CenterHead outputs that reproduce its own targets for sample b's ``boxes[b]``, ``labels[b]`` on
    ``grid`` (X, Y): heatmap logits of the target heatmap, the box code at each centre cell."""
    per_sample = [head.get_targets_single(b, l, grid) for b, l in zip(boxes, labels)]
    preds = []
    for t in range(len(head.task_classes)):
        heatmap = torch.stack([s[t][0] for s in per_sample]).clamp(1e-6, 1 - 1e-6)
        code = torch.zeros(len(per_sample), head.coder.code_size, *grid)
        for b, s in enumerate(per_sample):
            cells, codes = s[t][1], s[t][2]
            code[b, :, cells[:, 0], cells[:, 1]] = codes.T
        widths = [CODE_SIZES[name] for name in head.coder.code_names]
        preds.append({"heatmap": torch.logit(heatmap), **dict(zip(head.coder.code_names, code.split(widths, dim=1)))})
    return preds


REGISTRIES = {
    "backbone": BACKBONES, "neck": NECKS, "vtransform": VTRANSFORMS, "bev_layer": BEV_LAYERS, "voxelizer": VOXELIZERS,
    "lidar_backbone": LIDAR_BACKBONES, "fuser": FUSERS, "head": HEADS,
}


def tiny_simdistill_cfg(compensation: str = "DeformableBEVAttention", **kwargs) -> dict:
    """A tiny SimDistill student: ``tiny_model_cfg`` without LiDAR plus the simulated-LiDAR branch
    (a second lift, the geometry compensation ``compensation``, T to 16 channels) and a ConvFuser."""
    import copy

    cfg = tiny_model_cfg(lidar=False, fuser="ConvFuser", **kwargs)
    layer = (dict(type=compensation, num_heads=8, num_points=20) if compensation == "DeformableBEVAttention"
             else dict(type=compensation, num_layers=2))
    cfg.update(type="SimDistillStudent", depth_loss=dict(type="DenseDepthLoss", loss_weight=3.0))
    cfg["encoders"]["sim_lidar"] = dict(vtransform=copy.deepcopy(cfg["encoders"]["camera"]["vtransform"]),
                                        compensation=layer, adapter=dict(type="ConvFuser", out_channels=16))
    return cfg
