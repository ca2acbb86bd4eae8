"""Image and BEV backbones: torchvision/mmdet checkpoint names, freezing, strides and widths."""
import logging

import pytest
import torch

from mmdet3d.models.backbones import SECOND, GeneralizedResNet, ResNet, TinyResNet, load_pretrained


def torchvision_style_state(model: ResNet) -> dict:
    """The model's weights as torchvision saves them (plus its classifier ``fc``)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    width = model.out_channels[-1]
    state["fc.weight"] = torch.zeros(1000, width)
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("depth, num_keys, widths", [(18, 120, [64, 128, 256, 512]), (50, 318, [256, 512, 1024, 2048])])
def test_resnet_names_widths_and_strides(depth, num_keys, widths):
    model = ResNet(depth=depth)
    keys = set(model.state_dict())
    # torchvision's resnet{18,50} state dicts hold 122 / 320 keys, 2 of them the classifier ``fc``.
    assert len(keys) == num_keys
    expected = {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer4.1.bn2.weight",
                "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean", "bn1.num_batches_tracked"}
    assert expected <= keys
    if depth == 50:
        assert {"layer1.0.downsample.0.weight", "layer3.5.conv3.weight", "layer4.2.bn3.bias"} <= keys
    assert model.out_channels == widths
    outs = model.eval()(torch.randn(1, 3, 64, 96))
    assert [o.shape for o in outs] == [torch.Size([1, w, 64 // s, 96 // s]) for w, s in zip(widths, (4, 8, 16, 32))]


def test_resnet_loads_torchvision_checkpoint_and_reports_keys(tmp_path, caplog):
    source = ResNet(depth=18)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(torchvision_style_state(source), path)

    with caplog.at_level(logging.WARNING):
        model = ResNet(depth=18, out_indices=[1, 2, 3], init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    assert model.load_report.missing_keys == []
    assert sorted(model.load_report.unexpected_keys) == ["fc.bias", "fc.weight"]
    assert "fc.weight" in caplog.text
    for name, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)


def test_resnet_loads_mmdet_checkpoint_with_backbone_prefix(tmp_path):
    source = ResNet(depth=18)
    for p in source.parameters():
        torch.nn.init.uniform_(p)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items() if k != "layer4.1.bn2.weight"}
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(3)
    path = tmp_path / "mmdet-detector.pth"
    torch.save({"meta": {}, "state_dict": state}, path)

    model = ResNet(depth=18)
    report = load_pretrained(model, str(path))
    assert report.missing_keys == ["layer4.1.bn2.weight"]
    assert report.unexpected_keys == []
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_resnet_bad_init_cfg_is_a_clear_error():
    with pytest.raises(ValueError, match="Pretrained"):
        ResNet(depth=18, init_cfg=dict(type="Kaiming"))
    with pytest.raises(KeyError, match="depth 152"):
        ResNet(depth=152)


def test_frozen_stages_and_norm_eval():
    model = ResNet(depth=18, frozen_stages=1, norm_eval=False).train()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1", "bn1", "layer1.")) for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("layer2."))
    assert not model.bn1.training and not model.layer1[0].bn1.training and model.layer2[0].bn1.training

    model = ResNet(depth=18, norm_eval=True).train()
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.layer1[0].conv1.training
    before = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(model.bn1.running_mean, before)


def test_tiny_resnet_layout():
    model = TinyResNet(base_channels=8, stage_blocks=[1, 2, 1], out_indices=[0, 1, 2])
    assert model.out_channels == [8, 16, 32]
    assert "layer2.1.conv2.weight" in model.state_dict()
    outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 24), (2, 16, 8, 12), (2, 32, 4, 6)]


def test_bev_backbones_strides_and_widths():
    x = torch.randn(2, 8, 32, 24)
    second = SECOND(in_channels=8, out_channels=[16, 32], layer_nums=[1, 2], layer_strides=[1, 2])
    assert [tuple(o.shape) for o in second(x)] == [(2, 16, 32, 24), (2, 32, 16, 12)]
    resnet = GeneralizedResNet(in_channels=8, blocks=[[2, 16, 2], [1, 24, 2]])
    assert resnet.out_channels == [16, 24]
    assert [tuple(o.shape) for o in resnet(x)] == [(2, 16, 16, 12), (2, 24, 8, 6)]
    with pytest.raises(ValueError, match="same length"):
        SECOND(in_channels=8, out_channels=[16], layer_nums=[1, 1], layer_strides=[1, 2])


@pytest.mark.parametrize("shape, args", [((2, 3, 7, 9), (3, 2, 1)), ((2, 3, 8, 11), (2, 2, 0)), ((3, 9, 10), ((3, 2), (2, 1), (1, 0)))])
def test_max_pool_without_gradient_equals_torch(shape, args):
    """``layers.MaxPool2d`` (the ResNet stem's) without gradient: the strided-slice max equals
    ``F.max_pool2d`` value for value, NaN and odd sizes included; with gradient it is torch's own."""
    import torch.nn.functional as F

    from mmdet3d.models.layers import MaxPool2d

    torch.manual_seed(0)
    x = torch.randn(*shape)
    x[..., 0, 1, 1] = float("nan")
    pool = MaxPool2d(*args)
    with torch.no_grad():
        fast, reference = pool(x), F.max_pool2d(x, *args)
    assert fast.shape == reference.shape and fast.is_contiguous()
    torch.testing.assert_close(fast, reference, rtol=0, atol=0, equal_nan=True)
    grad_input = x.clone().requires_grad_()
    pool(grad_input).nan_to_num().sum().backward()
    assert grad_input.grad is not None
