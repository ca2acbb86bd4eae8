"""Atomic checkpoints, the latest.pth link and readable load errors (mmdet3d/apis/checkpoint.py)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from mmdet3d.utils import checkpoint as ckpt_mod
from mmdet3d.utils.checkpoint import (
    CheckpointError,
    add_prefix,
    cpu_state_dict,
    find_latest_checkpoint,
    find_resumable_checkpoint,
    load_checkpoint_file,
    load_inference_weights,
    load_model_weights,
    remove_stale_temporary_files,
    save_checkpoint,
    strip_prefix,
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
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*epoch_1.pth: disk full"):
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


class _RunsCode:
    """Unpickling this runs ``open(marker, "w")``: what a crafted checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": _net().state_dict(), "meta": {"payload": _RunsCode(str(marker))}}, tmp_path / "crafted.pth")
    with pytest.raises(CheckpointError, match=r"crafted.pth holds objects other than tensors.*\((io|builtins).open\).*not loaded"):
        load_checkpoint_file(str(tmp_path / "crafted.pth"))
    assert not marker.exists()


class Opaque:
    pass


def test_saved_meta_and_states_are_plain_and_load_with_weights_only(tmp_path):
    meta = {"epoch": np.int64(3), "loss": np.float32(0.5), "shape": (2, 3), "root": pathlib.Path("/data"),
            "device": torch.device("cpu"), "grid": np.arange(3), "config": {"size": [np.int32(4), (1, 2)]}}
    path = save_checkpoint(str(tmp_path / "a.pth"), _net(), meta=meta)
    loaded = torch.load(path, weights_only=True)["meta"]
    assert loaded["epoch"] == 3 and type(loaded["epoch"]) is int
    assert loaded["loss"] == 0.5 and type(loaded["loss"]) is float
    assert loaded["shape"] == [2, 3] and loaded["root"] == "/data" and loaded["device"] == "cpu"
    assert torch.equal(loaded["grid"], torch.arange(3)) and loaded["config"] == {"size": [4, [1, 2]]}
    with pytest.raises(CheckpointError, match=r"cannot save checkpoint .*b.pth: meta\['hook'\] is a .*Opaque"):
        save_checkpoint(str(tmp_path / "b.pth"), _net(), meta={"hook": Opaque()})
    assert not (tmp_path / "b.pth").exists()


def test_full_disk_names_the_file(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full not available")
    path = str(tmp_path / "epoch_1.pth")
    os.symlink("/dev/full", f"{path}.tmp-{os.getpid()}")  # the temporary file lands on a full device
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, _net(), meta={"epoch": 1})
    assert str(info.value) == f"cannot write checkpoint {path}: no space left on device"
    assert os.listdir(tmp_path) == []


class Distiller(nn.Module):
    checkpoint_exclude = ("teacher.",)

    def __init__(self):
        super().__init__()
        self.teacher, self.student = _net(4), _net(8)


def test_teacher_student_prefixes(tmp_path):
    teacher_ckpt = save_checkpoint(str(tmp_path / "teacher.pth"), _net(4))
    distiller = Distiller()
    report = load_model_weights(distiller, load_checkpoint_file(teacher_ckpt)["state_dict"], strict=True, into="teacher.")
    assert report == ([], []) and torch.equal(distiller.teacher[0].weight, _net(4)[0].weight)
    # the frozen teacher never reaches the student's checkpoint, and is not expected back
    saved = save_checkpoint(str(tmp_path / "distill.pth"), distiller)
    keys = set(load_checkpoint_file(saved)["state_dict"])
    assert keys == {f"student.{k}" for k in _net(8).state_dict()}
    assert set(cpu_state_dict(distiller, exclude=())) == keys | {f"teacher.{k}" for k in _net(4).state_dict()}
    fresh = Distiller()
    assert load_model_weights(fresh, load_checkpoint_file(saved)["state_dict"], strict=True) == ([], [])
    assert torch.equal(fresh.student[2].weight, distiller.student[2].weight)
    # the student part alone, into a plain model
    plain = _net(8)
    report = load_model_weights(plain, load_checkpoint_file(saved)["state_dict"], strict=True, from_prefix="student.")
    assert report.missing_keys == [] and torch.equal(plain[0].weight, distiller.student[0].weight)
    with pytest.raises(CheckpointError, match="has no keys under 'teacher.'"):
        load_model_weights(plain, load_checkpoint_file(saved)["state_dict"], strict=False, from_prefix="teacher.")
    with pytest.raises(CheckpointError, match="no sub-module 'assistant'"):
        load_model_weights(distiller, {}, strict=False, into="assistant.")
    state = {"a.w": 1, "a.b": 2, "c": 3}
    assert strip_prefix(state, "a.") == {"w": 1, "b": 2} and add_prefix({"w": 1}, "s.") == {"s.w": 1}


def test_load_report_lists_missing_and_unexpected():
    state = _net(4).state_dict()
    del state["0.bias"]
    state["extra"] = torch.zeros(1)
    report = load_model_weights(_net(4), state, strict=False)
    assert report.missing_keys == ["0.bias"] and report.unexpected_keys == ["extra"]
    assert report.summary() == "1 missing keys; 1 unexpected keys; missing: 0.bias; unexpected: extra"


def test_student_only_checkpoint_loads_into_plain_model(tmp_path):
    student = _net(8)
    torch.save({"state_dict": add_prefix(student.state_dict(), "student.")}, tmp_path / "student.pth")
    said = []
    target = _net(8)
    load_inference_weights(target, str(tmp_path / "student.pth"), log=said.append)
    assert torch.equal(target[2].weight, student[2].weight)
    assert len(said) == 1 and "'student.' keys" in said[0] and "without the prefix" in said[0]
    said.clear()
    load_inference_weights(_net(8), save_checkpoint(str(tmp_path / "plain.pth"), student), log=said.append)
    assert said == []


def test_resume_falls_back_past_a_corrupt_latest(tmp_path):
    run = str(tmp_path)
    for epoch in (1, 2):
        save_checkpoint(os.path.join(run, f"epoch_{epoch}.pth"), _net(), meta={"epoch": epoch})
    update_latest_link(run, "epoch_2.pth")
    assert find_resumable_checkpoint(run) == (os.path.join(run, "latest.pth"), [])
    with open(os.path.join(run, "epoch_2.pth"), "r+b") as f:
        f.truncate(100)
    path, skipped = find_resumable_checkpoint(run)
    assert path == os.path.join(run, "epoch_1.pth") and len(skipped) == 1 and "latest.pth cannot be read" in skipped[0]
    with open(path, "r+b") as f:
        f.truncate(0)
    assert find_resumable_checkpoint(run)[0] is None


def test_stale_temporary_files_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f"epoch_3.pth.tmp-{dead.stdout.strip()}", f"latest.pth.tmp-{dead.stdout.strip()}", f"epoch_4.pth.tmp-{alive.pid}", "epoch_2.pth"]
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        removed = remove_stale_temporary_files(str(tmp_path))
        assert sorted(os.path.basename(p) for p in removed) == sorted(names[:2])
        assert sorted(os.listdir(tmp_path)) == sorted(names[2:])
    finally:
        alive.kill()
        alive.wait()
