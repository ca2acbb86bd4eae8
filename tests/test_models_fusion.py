"""BEVFusion composition: BEV layout of the LiDAR branch, channel flow, samples kept apart, fuser
input order, undoing the LiDAR augmentation in ``predict``."""
import math

import numpy as np
import pytest
import torch

from mmdet3d.datasets.pipelines import GlobalRotScaleTrans, RandomFlip3D
from mmdet3d.models import build_model
from mmdet3d.models.fusion_models import invert_lidar_augmentation
from model_inputs import make_batch, perfect_predictions, tiny_model_cfg


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


MODELS = {
    "camera LSS": dict(lidar=False, fuser=None),
    "camera DepthLSS": dict(lidar=False, fuser=None, vtransform="DepthLSSTransform"),
    "camera+lidar ConvFuser": dict(vtransform="DepthLSSTransform"),
    "camera+lidar AddFuser": dict(fuser="AddFuser"),
    "lidar": dict(camera=False, fuser=None),
}


def with_sample_replaced(batch, b, images=True, points=True, seed=5):
    """A copy of ``batch`` with sample b's images and/or points replaced by other random ones."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(batch, img=batch["img"].clone(), points=list(batch["points"]))
    if images:
        out["img"][b] = torch.randn(out["img"][b].shape, generator=generator)
    if points:
        out["points"][b] = batch["points"][b][torch.randperm(len(batch["points"][b]), generator=generator)[:500]] * 0.7
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_samples_do_not_mix(name):
    """In eval mode, sample 0's maps do not depend on sample 1's images or points (B=2, N=3)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg(**MODELS[name])).eval()
    batch = make_batch(batch_size=2, num_cams=3, num_boxes=(3, 2))
    with torch.no_grad():
        before = model.extract_features(batch)
        after = model.extract_features(with_sample_replaced(batch, 1))
    for key in ("camera_bev", "depth_logits", "lidar_bev", "fused_bev", "decoder_out"):
        if before[key] is None:
            continue
        torch.testing.assert_close(after[key][0], before[key][0], msg=f"{key} of sample 0 changed")
        assert not torch.allclose(after[key][1], before[key][1]), f"{key} of sample 1 did not change"


@pytest.mark.parametrize("fuser", ["ConvFuser", "AddFuser"])
def test_fuser_reads_camera_first_then_lidar(fuser):
    """With the fuser's weights on the LiDAR input zeroed, the fused map follows the images only."""
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg(fuser=fuser)).eval()
    assert model.fuser.in_channels == [16, 16]
    with torch.no_grad():
        if fuser == "ConvFuser":
            model.fuser.fuse[0].weight[:, 16:] = 0.0  # input channels 16:32 are the LiDAR BEV
        else:
            model.fuser.projections[1][0].weight.zero_()
        batch = make_batch(batch_size=1, num_cams=3, num_boxes=(3,))
        fused = model.extract_features(batch)["fused_bev"]
        new_points = model.extract_features(with_sample_replaced(batch, 0, images=False))["fused_bev"]
        new_images = model.extract_features(with_sample_replaced(batch, 0, points=False))["fused_bev"]
    torch.testing.assert_close(new_points, fused)
    assert not torch.allclose(new_images, fused)


def pipeline_augmentation(boxes, seed, flip_ratio):
    """Boxes through the training pipeline's GlobalRotScaleTrans and RandomFlip3D -> (boxes, matrix)."""
    np.random.seed(seed)
    results = {"gt_bboxes_3d": boxes.clone()}
    results = GlobalRotScaleTrans(resize_lim=(0.9, 1.1), rot_lim=(-0.8, 0.8), trans_lim=0.5)(results)
    results = RandomFlip3D(flip_ratio=flip_ratio)(results)
    return results["gt_bboxes_3d"], torch.from_numpy(results["lidar_aug_matrix"])


def test_predict_undoes_lidar_augmentation():
    """Perfect head outputs for the augmented boxes decode to the un-augmented boxes, per sample."""
    model = build_model(tiny_model_cfg(lidar=False, fuser=None)).eval()
    head = model.heads["object"]
    head.score_threshold = 0.99  # the centre peaks only
    original = [torch.tensor([[4.0, 3.0, -0.8, 4.2, 1.9, 1.6, 0.5, 2.0, -1.0], [-6.0, 5.0, -0.7, 0.7, 0.6, 1.7, -2.0, 0.4, 0.8]]),
                torch.tensor([[-3.0, -7.0, -0.9, 4.5, 2.0, 1.5, 2.5, -3.0, 0.5]])]
    labels = [torch.tensor([0, 8]), torch.tensor([3])]
    augmented, matrices = zip(*(pipeline_augmentation(b, seed, ratio) for b, seed, ratio in zip(original, (1, 2), (0.0, 1.0))))
    assert not any(torch.allclose(m, torch.eye(4)) for m in matrices)
    batch = {"lidar_aug_matrix": torch.stack(matrices)}
    results = model.predict(batch, {"object": perfect_predictions(head, list(augmented), labels, (32, 32))})
    for result, boxes, sample_labels in zip(results, original, labels):
        order = torch.cdist(boxes[:, :2], result["boxes_3d"][:, :2]).argmin(dim=1)
        decoded = result["boxes_3d"][order]
        assert len(result["boxes_3d"]) == len(boxes) and result["labels_3d"][order].tolist() == sample_labels.tolist()
        torch.testing.assert_close(decoded[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-4, rtol=1e-4)
        yaw_error = torch.atan2((decoded[:, 6] - boxes[:, 6]).sin(), (decoded[:, 6] - boxes[:, 6]).cos())
        assert yaw_error.abs().max() < 1e-4


@pytest.mark.parametrize("decoder", ["SECOND", "GeneralizedResNet"])
def test_decoder_output_stays_aligned_with_its_input(decoder):
    """An impulse in the fused BEV cell (x, y) moves the decoder output around the same place."""
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg(decoder=decoder)).eval()
    width = model.decoder["backbone"].in_channels
    with torch.no_grad():
        zeros = torch.zeros(1, width, 32, 32)
        base = model.decoder["neck"](model.decoder["backbone"](zeros))
        for x, y in [(6, 25), (22, 9)]:
            impulse = zeros.clone()
            impulse[0, :, x, y] = 3.0
            change = (model.decoder["neck"](model.decoder["backbone"](impulse)) - base).abs().sum(dim=(0, 1))
            scale = change.shape[0] / 32
            xs, ys = torch.meshgrid(torch.arange(change.shape[0]), torch.arange(change.shape[1]), indexing="ij")
            centre = torch.stack([(xs * change).sum(), (ys * change).sum()]) / change.sum() / scale
            assert (centre - torch.tensor([x, y])).abs().max() < 2.0, (decoder, centre)
