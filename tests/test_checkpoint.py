"""Atomic checkpoints, the latest.pth link and readable load errors (mmdet3d/apis/checkpoint.py)."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from mmdet3d.apis import checkpoint as ckpt_mod
from mmdet3d.apis.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    load_checkpoint_file,
    load_model_weights,
    save_checkpoint,
    update_latest_link,
)


def _net(width: int = 4) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.Linear(width, 2))


def test_round_trip_with_optimizer_and_meta(tmp_path):
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(str(tmp_path / "epoch_1.pth"), net, opt, meta={"epoch": 1, "iter": 7, "config": {"lr": 0.1}})
    ckpt = load_checkpoint_file(path)
    assert ckpt["meta"]["epoch"] == 1 and ckpt["meta"]["iter"] == 7 and ckpt["meta"]["config"] == {"lr": 0.1}
    assert isinstance(ckpt["meta"]["torch"], str)
    fresh = _net(4)
    missing, unexpected = load_model_weights(fresh, ckpt["state_dict"], strict=True)
    assert missing == [] and unexpected == []
    for (k, a), b in zip(net.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1


def test_wrapped_model_saved_without_module_prefix(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    path = save_checkpoint(str(tmp_path / "a.pth"), Wrapper(_net()))
    assert all(not k.startswith("module.") for k in load_checkpoint_file(path)["state_dict"])
    # a bare DDP-style state dict with "module." keys is accepted and stripped
    torch.save({f"module.{k}": v for k, v in _net().state_dict().items()}, tmp_path / "ddp.pth")
    assert set(load_checkpoint_file(str(tmp_path / "ddp.pth"))["state_dict"]) == set(_net().state_dict())


def test_crash_while_saving_keeps_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "epoch_1.pth")
    save_checkpoint(path, _net(), meta={"epoch": 1})
    good = open(path, "rb").read()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _net(8), meta={"epoch": 2})
    assert open(path, "rb").read() == good
    assert os.listdir(tmp_path) == ["epoch_1.pth"]  # no temporary file left behind


def test_latest_link_and_fallback(tmp_path):
    run = str(tmp_path)
    assert find_latest_checkpoint(run) is None
    for epoch in (1, 2, 10):
        save_checkpoint(os.path.join(run, f"epoch_{epoch}.pth"), _net(), meta={"epoch": epoch})
    assert find_latest_checkpoint(run) == os.path.join(run, "epoch_10.pth")  # numeric, not lexical
    update_latest_link(run, "epoch_2.pth")
    update_latest_link(run, "epoch_1.pth")  # replaces the existing link
    link = os.path.join(run, "latest.pth")
    assert os.path.islink(link) and os.readlink(link) == "epoch_1.pth"
    assert find_latest_checkpoint(run) == link
    assert load_checkpoint_file(link)["meta"]["epoch"] == 1


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*nope.pth"):
        load_checkpoint_file(str(tmp_path / "nope.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth cannot be read"):
        load_checkpoint_file(str(tmp_path / "garbage.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint_file(str(tmp_path / "list.pth"))


def test_load_model_weights_rules():
    net = _net(4)
    state = net.state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("2.")}
    partial["extra.weight"] = torch.zeros(1)
    target = _net(4)
    missing, unexpected = load_model_weights(target, partial, strict=False)
    assert missing == ["2.weight", "2.bias"] and unexpected == ["extra.weight"]
    assert torch.equal(target[0].weight, net[0].weight)
    with pytest.raises(CheckpointError, match="missing keys: 2.weight, 2.bias; unexpected keys: extra.weight"):
        load_model_weights(_net(4), partial, strict=True, source="checkpoint x.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch for 0.weight \(checkpoint \(8, 3\) vs model \(4, 3\)\)"):
        load_model_weights(_net(4), _net(8).state_dict(), strict=False)
    other = nn.Conv2d(1, 1, 1).state_dict()
    with pytest.raises(CheckpointError, match="none of its 2 keys match.*different architecture"):
        load_model_weights(_net(4), other, strict=False)
