"""fold_batchnorm: a frozen model's BatchNorm folded into the convs before it computes the same maps."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmdet3d.models import build_model
from mmdet3d.models.backbones import ResNet
from mmdet3d.models.layers import conv_bn_relu, deconv_bn_relu, fold_batchnorm, fold_linear_batchnorm
from model_inputs import make_batch, tiny_model_cfg


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Statistics and affine weights of both signs, so a norm folded into the wrong layer shows."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_conv_deconv_and_linear_fold_by_hand():
    torch.manual_seed(0)
    conv = _randomise_norms(conv_bn_relu(3, 4, 3, stride=2))
    deconv = _randomise_norms(deconv_bn_relu(4, 5, 2))
    linear, norm = nn.Linear(6, 3, bias=True), _randomise_norms(nn.BatchNorm1d(3))
    x, v = torch.randn(2, 3, 9, 9), torch.randn(7, 6)
    with torch.no_grad():
        expected = deconv(conv(x))
        expected_linear = norm(linear(v))
        # the hand formula: gamma * (W x + b - mean) / sqrt(var + eps) + beta
        manual = (linear(v) - norm.running_mean) / (norm.running_var + norm.eps).sqrt() * norm.weight + norm.bias
        torch.testing.assert_close(expected_linear, manual)
        assert fold_batchnorm(conv) == 1 and fold_batchnorm(deconv) == 1
        assert isinstance(conv[1], nn.Identity) and conv[0].bias is not None
        assert isinstance(fold_linear_batchnorm(linear, norm), nn.Identity)
        torch.testing.assert_close(deconv(conv(x)), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(v), expected_linear, rtol=1e-5, atol=1e-5)
        assert fold_batchnorm(conv) == 0  # idempotent


def test_fold_refuses_training_mode_and_unfoldable_pairs():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(conv_bn_relu(3, 4).train())
    with pytest.raises(ValueError, match="cannot fold"):
        fold_linear_batchnorm(nn.Linear(3, 4), nn.BatchNorm1d(5))
    stats_free = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert fold_batchnorm(stats_free) == 0  # uses batch statistics even in eval: left alone


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_blocks_and_stem_fold(depth):
    net = _randomise_norms(ResNet(depth=depth, base_channels=8, stage_blocks=[1, 1], strides=[1, 2], out_indices=[0, 1]))
    x = torch.randn(1, 3, 32, 32)
    folded = copy.deepcopy(net)
    with torch.no_grad():
        expected = net(x)
        assert fold_batchnorm(folded) == _norms(net) and _norms(folded) == 0
        for a, b in zip(folded(x), expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["camera+lidar", "depth_lss", "pillars"])
def test_whole_teacher_folds_to_the_same_maps(kind):
    cfg = {"camera+lidar": tiny_model_cfg(dynamic_pillars=True),
           "depth_lss": tiny_model_cfg(lidar=False, fuser=None, vtransform="DepthLSSTransform"),
           "pillars": tiny_model_cfg(camera=False, fuser=None)}[kind]
    torch.manual_seed(0)
    model = _randomise_norms(build_model(cfg))
    folded = copy.deepcopy(model)
    batch = make_batch(batch_size=2, num_cams=2, image_size=(64, 96), num_boxes=(3, 1), extent=12.8, num_points=2000)
    with torch.no_grad():
        expected = model.extract_features(batch)
        assert fold_batchnorm(folded) == _norms(model) and _norms(folded) == 0
        got = folded.extract_features(batch)
    for key, value in expected.items():
        if value is not None:
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-4, msg=key)


@pytest.mark.parametrize("bias", [False, True])
def test_one_channel_conv_equals_conv2d(bias):
    """``OneChannelConv1x1`` (the LiDAR depth image's first layer) is ``nn.Conv2d(1, C, 1)``: same
    state-dict keys, outputs and gradients, bit for bit; ``conv_bn_relu(1, C, 1)`` builds it."""
    from mmdet3d.models.layers import OneChannelConv1x1

    torch.manual_seed(5)
    conv = nn.Conv2d(1, 8, 1, bias=bias)
    fast = OneChannelConv1x1(8, bias=bias)
    fast.load_state_dict(conv.state_dict())
    assert list(fast.state_dict()) == list(conv.state_dict())
    x = torch.randn(3, 1, 7, 11).relu()  # a sparse depth image: zeros and positive depths
    out_conv, out_fast = conv(x), fast(x)
    assert torch.equal(out_fast, out_conv)
    grad = torch.randn_like(out_conv)
    out_conv.backward(grad)
    out_fast.backward(grad)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-6, atol=1e-6)
    if bias:
        torch.testing.assert_close(fast.bias.grad, conv.bias.grad, rtol=1e-6, atol=1e-6)
    assert isinstance(conv_bn_relu(1, 8, 1)[0], OneChannelConv1x1)
    assert type(conv_bn_relu(2, 8, 1)[0]) is nn.Conv2d and type(conv_bn_relu(1, 8, 3)[0]) is nn.Conv2d
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        fast(torch.randn(1, 2, 4, 4))
    # folded like any conv: a BatchNorm after it disappears and the map stays the same
    block = _randomise_norms(conv_bn_relu(1, 8, 1))
    before = block(x)
    assert fold_batchnorm(block) == 1 and isinstance(block[1], nn.Identity)
    torch.testing.assert_close(block(x), before, rtol=1e-5, atol=1e-6)
