"""BEVFusion composition: BEV layout of the LiDAR branch, channel flow, undoing the LiDAR augmentation."""
import math

import torch

from mmdet3d.models import build_model
from mmdet3d.models.fusion_models import invert_lidar_augmentation
from model_inputs import make_batch, tiny_model_cfg


def test_lidar_bev_is_laid_out_x_then_y():
    model = build_model(tiny_model_cfg(camera=False, fuser=None, extent=8.0)).eval()
    batch = make_batch(batch_size=2, num_cams=1, image_size=(32, 48), extent=8.0, num_points=10)
    batch["points"] = [torch.tensor([[3.3, -1.1, 0.0, 0.5, 0.0]]), torch.tensor([[-7.9, 7.9, 0.0, 0.5, 0.0]])]
    with torch.no_grad():
        bev = model.extract_lidar_features(batch)
    assert tuple(bev.shape) == (2, 16, 20, 20)
    occupied = [bev[b].abs().sum(0).nonzero().tolist() for b in range(2)]
    # floor((3.3 + 8) / 0.8) = 14, floor((-1.1 + 8) / 0.8) = 8; the corner point lands in (0, 19).
    assert occupied == [[[14, 8]], [[0, 19]]]


def test_channels_flow_from_config():
    model = build_model(tiny_model_cfg(fuser="ConvFuser"))
    camera, lidar = model.encoders["camera"], model.encoders["lidar"]
    assert camera["neck"].in_channels == camera["backbone"].out_channels == [16, 32]
    assert camera["vtransform"].in_channels == camera["neck"].out_channels == 16
    assert lidar["backbone"].pts_voxel_encoder.in_channels == lidar["voxelize"].out_channels == 5
    assert model.fuser.in_channels == [camera["vtransform"].out_channels, lidar["backbone"].out_channels]
    assert model.decoder["backbone"].in_channels == model.fuser.out_channels
    assert model.heads["object"].in_channels == model.decoder["neck"].out_channels == 32


def augment_boxes(boxes, matrix):
    """The forward LiDAR augmentation of (K, 9) boxes: ``p' = A p + t``, sizes times the scale."""
    linear, translation = matrix[:3, :3], matrix[:3, 3]
    scale = linear.det().abs() ** (1 / 3)
    heading = torch.stack([boxes[:, 6].cos(), boxes[:, 6].sin(), torch.zeros(len(boxes))], 1) @ linear.T
    velocity = torch.cat([boxes[:, 7:9], torch.zeros(len(boxes), 1)], 1) @ linear.T
    return torch.cat([boxes[:, :3] @ linear.T + translation, boxes[:, 3:6] * scale,
                      torch.atan2(heading[:, 1], heading[:, 0])[:, None], velocity[:, :2]], 1)


def test_invert_lidar_augmentation_round_trip():
    boxes = torch.tensor([[10.0, -4.0, 0.5, 4.2, 1.8, 1.5, 0.4, 3.0, -1.0],
                          [-20.0, 7.0, -0.3, 0.6, 0.6, 1.7, -2.9, 0.0, 0.5]], dtype=torch.float64)
    theta, scale = 0.3, 1.07
    rotation = torch.tensor([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]],
                            dtype=torch.float64)
    flip_y = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] = flip_y @ rotation * scale
    matrix[:3, 3] = torch.tensor([0.4, -0.2, 0.1])
    augmented = augment_boxes(boxes, matrix)
    assert not torch.allclose(augmented, boxes)
    restored = invert_lidar_augmentation(augmented, matrix)
    torch.testing.assert_close(restored[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]])
    yaw_error = torch.atan2((restored[:, 6] - boxes[:, 6]).sin(), (restored[:, 6] - boxes[:, 6]).cos())
    assert yaw_error.abs().max() < 1e-9
