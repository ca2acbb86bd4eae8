"""Optimiser groups, lr schedules, clipping and gradient accumulation (mmdet3d/core/optimizer.py, lr_scheduler.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmdet3d.core.lr_scheduler import annealing_cos, build_lr_scheduler
from mmdet3d.core.optimizer import GradientStepper, build_optimizer, parse_paramwise_cfg
from mmdet3d.utils.config import ConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({"camera": nn.ModuleDict({"backbone": nn.Linear(3, 4), "neck": nn.Linear(4, 4)})})
        self.heads = nn.Linear(4, 2)

    def forward(self, x):
        return self.heads(self.encoders["camera"]["neck"](self.encoders["camera"]["backbone"](x)))


def _groups(opt):
    return {g["name"]: g for g in opt.param_groups}


def test_paramwise_multipliers_and_groups():
    net = Net()
    opt = build_optimizer(
        net,
        {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.01, "paramwise_cfg": {"encoders.camera.backbone": 0.1, "encoders.camera": {"lr_mult": 0.5, "decay_mult": 0.0}}},
    )
    groups = _groups(opt)
    assert opt.param_groups[0]["name"] == "default"
    assert groups["default"]["lr"] == pytest.approx(1e-3) and groups["default"]["weight_decay"] == pytest.approx(0.01)
    # the longest prefix wins: the backbone gets 0.1, the neck (only "encoders.camera") 0.5 and no decay
    assert groups["encoders.camera.backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["encoders.camera"]["lr"] == pytest.approx(5e-4) and groups["encoders.camera"]["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(groups["encoders.camera.backbone"]) == {id(p) for p in net.encoders["camera"]["backbone"].parameters()}
    assert ids(groups["encoders.camera"]) == {id(p) for p in net.encoders["camera"]["neck"].parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


def test_frozen_parameters_left_out():
    net = Net()
    for p in net.heads.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(net, {"lr": 1e-3})
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in net.heads.parameters()}
    assert len(in_opt) == 4


def test_paramwise_unknown_prefix_names_closest_module():
    with pytest.raises(ConfigError, match=r"encoders\.camera\.backbon'.*closest modules: encoders\.camera\.backbone"):
        build_optimizer(Net(), {"lr": 1e-3, "paramwise_cfg": {"encoders.camera.backbon": 0.1}})
    with pytest.raises(ConfigError, match="paramwise_cfg.heads"):
        parse_paramwise_cfg({"heads": "fast"})
    with pytest.raises(ConfigError, match="optimizer.type 'Adamw'"):
        build_optimizer(Net(), {"type": "Adamw", "lr": 1e-3})


def _lrs(policy_cfg, total, steps=None):
    net = Net()
    opt = build_optimizer(net, {"lr": 1.0, "paramwise_cfg": {"heads": 0.5}})
    sched = build_lr_scheduler(opt, policy_cfg, total_iters=total)
    out = []
    for _ in range(steps if steps is not None else total + 1):
        out.append([g["lr"] for g in opt.param_groups])
        sched.step()
    return out


def test_cosine_with_warmup_values():
    lrs = _lrs({"policy": "cosine", "warmup_iters": 4, "warmup_ratio": 0.25, "min_lr_ratio": 0.01}, total=20)
    assert lrs[0][0] == pytest.approx(0.25)  # warmup starts at warmup_ratio * lr (cosine factor 1 at t=0)
    regular = annealing_cos(1.0, 0.01, 2 / 20)
    assert lrs[2][0] == pytest.approx(regular * (1 - 0.5 * 0.75))
    assert lrs[4][0] == pytest.approx(annealing_cos(1.0, 0.01, 4 / 20))
    assert lrs[10][0] == pytest.approx(0.505)  # half way: mean of 1 and 0.01
    assert lrs[20][0] == pytest.approx(0.01)
    assert all(group[1] == pytest.approx(0.5 * group[0]) for group in lrs)  # multiplier kept


def test_cyclic_peak_and_end():
    lrs = [g[0] for g in _lrs({"policy": "cyclic", "target_ratio": [10, 1e-4], "step_ratio_up": 0.4}, total=10)]
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(annealing_cos(1.0, 10.0, 0.5))
    assert lrs[4] == pytest.approx(10.0) and max(lrs) == pytest.approx(10.0)
    assert lrs[10] == pytest.approx(1e-4)
    assert all(a <= b for a, b in zip(lrs[:4], lrs[1:5])) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_scheduler_state_resumes_curve():
    net = Net()
    opt = build_optimizer(net, {"lr": 1.0})
    sched = build_lr_scheduler(opt, {"policy": "cosine", "warmup_iters": 3}, total_iters=12)
    for _ in range(5):
        sched.step()
    state = sched.state_dict()
    expected = [opt.param_groups[0]["lr"]]
    for _ in range(3):
        sched.step()
        expected.append(opt.param_groups[0]["lr"])
    opt2 = build_optimizer(Net(), {"lr": 1.0})
    sched2 = build_lr_scheduler(opt2, {"policy": "cosine", "warmup_iters": 3}, total_iters=12)
    sched2.load_state_dict(state)
    got = [opt2.param_groups[0]["lr"]]
    for _ in range(3):
        sched2.step()
        got.append(opt2.param_groups[0]["lr"])
    assert got == pytest.approx(expected)


def test_schedule_config_errors():
    opt = build_optimizer(Net(), {"lr": 1.0})
    with pytest.raises(ConfigError, match="lr_config.policy 'step'"):
        build_lr_scheduler(opt, {"policy": "step"}, total_iters=10)
    with pytest.raises(ConfigError, match=r"unknown keys \['warmup_iter'\]"):
        build_lr_scheduler(opt, {"policy": "cosine", "warmup_iter": 10}, total_iters=10)
    assert build_lr_scheduler(opt, {"policy": "CosineAnnealing", "warmup": "linear"}, total_iters=4).policy == "cosine"


def test_grad_clip_bounds_the_norm():
    net = nn.Linear(4, 1, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    stepper = GradientStepper(opt, grad_clip={"max_norm": 0.5, "norm_type": 2})
    before = net.weight.detach().clone()
    loss = (net(torch.full((1, 4), 100.0)) ** 2).sum()
    assert stepper.backward(loss, 0)
    assert stepper.last_grad_norm > 0.5  # the norm before clipping is reported
    assert float((net.weight.detach() - before).norm()) == pytest.approx(0.5, rel=1e-5)  # SGD lr 1: step = clipped grad


def _train(cumulative, batches, iters_per_epoch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    stepper = GradientStepper(opt, cumulative_iters=cumulative, iters_per_epoch=iters_per_epoch)
    steps = 0
    for i, (x, y) in enumerate(batches):
        steps += stepper.backward(((net(x) - y) ** 2).mean(), i)
    return net, steps


def test_accumulation_equals_larger_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, generator=g), torch.randn(6, 1, generator=g)
    big, steps_big = _train(1, [(x[:4], y[:4]), (x[4:], y[4:])], iters_per_epoch=2)
    # 3 iterations of 2 samples, cumulative 2: groups {0, 1} and the epoch remainder {2}
    small, steps_small = _train(2, [(x[0:2], y[0:2]), (x[2:4], y[2:4]), (x[4:], y[4:])], iters_per_epoch=3)
    assert steps_big == steps_small == 2
    for a, b in zip(big.parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_accumulation_groups_and_validation():
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    stepper = GradientStepper(opt, cumulative_iters=4, iters_per_epoch=10)
    assert [stepper.group_size(i) for i in range(10)] == [4] * 8 + [2, 2]
    assert [i for i in range(10) if stepper.is_step_iter(i)] == [3, 7, 9]
    with pytest.raises(ConfigError, match="cumulative_iters must be >= 1"):
        GradientStepper(opt, cumulative_iters=0)
    with pytest.raises(ConfigError, match="grad_clip needs max_norm"):
        GradientStepper(opt, grad_clip={"norm_type": 2})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision needs CUDA")
def test_fp16_step_on_cuda():
    net = nn.Linear(8, 1).cuda()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    stepper = GradientStepper(opt, fp16=True, grad_clip={"max_norm": 10})
    before = net.weight.detach().clone()
    with stepper.autocast(torch.device("cuda")):
        out = net(torch.randn(4, 8, device="cuda"))
        assert out.dtype == torch.float16
    assert stepper.backward(out.float().pow(2).mean(), 0)
    assert not torch.equal(before, net.weight.detach())
    assert stepper.state_dict()["scaler"]["scale"] > 0 and math.isfinite(stepper.last_grad_norm)
