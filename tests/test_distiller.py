"""BEVDistiller: frozen teacher, camera-only student, loss registry, checkpoints without the teacher."""
from __future__ import annotations

import copy

import pytest
import torch

from mmdet3d.datasets.example_batches import add_depth_targets
from mmdet3d.models import build_model
from mmdet3d.models.distillers import named_tensors
from mmdet3d.utils.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint
from model_inputs import make_batch, tiny_model_cfg

IMAGE = (32, 48)
EXTENT = 8.0
LOSSES = [
    dict(type="InnerDepthLoss", weight=1.0),
    dict(type="InterKeypointLoss", lattice=4, enlarge=1.6, weight=100.0),
    dict(type="InterChannelLoss", lattice=4, enlarge=1.6, weight=10.0),
]


def _student_cfg():
    cfg = tiny_model_cfg(image_size=IMAGE, extent=EXTENT, lidar=False, fuser=None)
    cfg["depth_loss"] = dict(type="DenseDepthLoss", loss_weight=3.0)
    return cfg


@pytest.fixture()
def teacher_checkpoint(tmp_path):
    torch.manual_seed(0)
    teacher = build_model(tiny_model_cfg(image_size=IMAGE, extent=EXTENT))
    for module in teacher.modules():  # non-trivial BN statistics, so a reset would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
    return save_checkpoint(str(tmp_path / "teacher.pth"), teacher), teacher


def _distiller(path, **kwargs):
    cfg = dict(type="BEVDistiller", teacher=tiny_model_cfg(image_size=IMAGE, extent=EXTENT), student=_student_cfg(),
               teacher_checkpoint=path, distill_losses=copy.deepcopy(LOSSES))
    cfg.update(kwargs)
    return build_model(cfg)


def _batch():
    batch = make_batch(batch_size=2, num_cams=2, image_size=IMAGE, num_boxes=(3, 1), extent=EXTENT, num_points=3000)
    return add_depth_targets(batch, downsample=8, dbound=[1.0, 12.0, 1.0])


def test_teacher_is_loaded_frozen_and_never_trained(teacher_checkpoint):
    """With its BatchNorm layers kept (``fold_teacher_batchnorm: false``): their statistics never move."""
    path, reference = teacher_checkpoint
    model = _distiller(path, fold_teacher_batchnorm=False).train()
    assert not model.teacher.training and all(not m.training for m in model.teacher.modules())
    for (name, a), b in zip(model.teacher.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    before = copy.deepcopy(model.teacher.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = _batch()
    for _ in range(2):
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert {"loss/distill/inner_depth", "loss/distill/inter_keypoint", "loss/distill/inter_channel",
            "loss/depth/dense"} <= set(losses)
    assert all(torch.isfinite(v) and v > 0 for k, v in losses.items() if k.startswith("loss/distill/"))
    for name, value in model.teacher.state_dict().items():  # weights and BN running statistics
        assert torch.equal(value, before[name]), f"teacher {name} changed"
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert model.distill_losses[2].adapter.weight.grad.abs().sum() > 0


def test_folded_teacher_computes_what_the_loaded_teacher_does(teacher_checkpoint):
    """The default deploy form: no BatchNorm left, the same maps as the checkpoint's model in eval,
    unchanged by training steps; lifts of one geometry share a splat structure."""
    path, reference = teacher_checkpoint
    for module in reference.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(-1.5, 1.5)
    path = save_checkpoint(path, reference)
    model = _distiller(path, init_from_teacher=["decoder", "heads"]).train()
    assert model.teacher_batchnorms_folded > 0
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.teacher.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.student.decoder.modules())
    lifts = [m["camera"]["vtransform"] for m in (model.teacher.encoders, model.student.encoders)]
    assert lifts[0].structure_cache is lifts[1].structure_cache
    batch = _batch()
    with torch.no_grad():
        expected = reference.eval().extract_features(batch)
        got = model.teacher.extract_features(batch)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-4, msg=key)
    before = copy.deepcopy(model.teacher.state_dict())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        sum(model(batch).values()).backward()
        optimizer.step()
    assert all(torch.equal(v, before[k]) for k, v in model.teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())


def test_each_distill_loss_reaches_the_student():
    """Every TiG term alone sends gradient into the student's camera branch."""
    torch.manual_seed(0)
    teacher = build_model(tiny_model_cfg(image_size=IMAGE, extent=EXTENT))
    batch = _batch()
    for cfg in LOSSES:
        model = build_model(dict(type="BEVDistiller", teacher=tiny_model_cfg(image_size=IMAGE, extent=EXTENT),
                                 student=_student_cfg(), teacher_checkpoint=None, distill_losses=[cfg],
                                 fold_teacher_batchnorm=False)).train()
        model.teacher.load_state_dict(teacher.state_dict())
        losses = model(batch)
        name = next(k for k in losses if k.startswith("loss/distill/"))
        losses[name].backward()
        grads = [p.grad for p in model.student.encoders["camera"]["backbone"].parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, name


def test_checkpoint_holds_no_teacher_and_tools_load_the_student(teacher_checkpoint, tmp_path):
    path, _ = teacher_checkpoint
    model = _distiller(path)
    saved = save_checkpoint(str(tmp_path / "student.pth"), model)
    state = load_checkpoint_file(saved)["state_dict"]
    assert state and not any(k.startswith("teacher.") for k in state)
    assert all(k.startswith(("student.", "distill_losses.")) for k in state)


def test_eval_runs_the_student_only_without_points(teacher_checkpoint):
    path, _ = teacher_checkpoint
    model = _distiller(path).eval()
    batch = _batch()
    del batch["points"]
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2 and all(torch.isfinite(r["boxes_3d"]).all() for r in results)


def test_missing_or_mismatched_teacher_checkpoint_fails_before_training(tmp_path, teacher_checkpoint):
    with pytest.raises(CheckpointError, match="teacher_checkpoint not found"):
        _distiller(str(tmp_path / "nope.pth"))
    other = build_model(tiny_model_cfg(image_size=IMAGE, extent=EXTENT, lidar=False, fuser=None))
    wrong = save_checkpoint(str(tmp_path / "camera_only.pth"), other)
    with pytest.raises(CheckpointError, match="missing keys: .*encoders.lidar"):
        _distiller(wrong)


def test_student_that_reads_lidar_is_refused(teacher_checkpoint):
    path, _ = teacher_checkpoint
    with pytest.raises(ValueError, match="reads LiDAR"):
        _distiller(path, student=tiny_model_cfg(image_size=IMAGE, extent=EXTENT))
    depth_lss = tiny_model_cfg(image_size=IMAGE, extent=EXTENT, lidar=False, fuser=None, vtransform="DepthLSSTransform")
    with pytest.raises(ValueError, match="reads LiDAR"):
        _distiller(path, student=depth_lss)


def test_init_from_teacher_copies_decoder_and_heads(teacher_checkpoint):
    path, reference = teacher_checkpoint
    model = _distiller(path, init_from_teacher=["decoder", "heads"])
    for part in ("decoder", "heads"):
        for (k, a), b in zip(getattr(model.student, part).state_dict().items(), getattr(reference, part).state_dict().values()):
            assert torch.equal(a, b), f"{part}.{k}"
    with pytest.raises(ValueError, match="init_from_teacher"):
        _distiller(path, init_from_teacher=["encoders"])


def test_loss_names_are_unique_and_tensor_names_checked(teacher_checkpoint):
    path, _ = teacher_checkpoint
    with pytest.raises(ValueError, match="distinct name"):
        _distiller(path, distill_losses=[dict(type="InnerDepthLoss"), dict(type="InnerDepthLoss")])
    model = _distiller(path, distill_losses=[dict(type="InterKeypointLoss", student="lidar_bev", teacher="lidar_bev")]).train()
    with pytest.raises(KeyError, match="student has no tensor 'lidar_bev'"):
        model(_batch())


def test_teacher_heads_run_only_when_a_loss_reads_them_and_keypoints_are_sampled_once(teacher_checkpoint, monkeypatch):
    path, _ = teacher_checkpoint
    batch = _batch()
    model = _distiller(path).train()
    assert not model.teacher_heads_needed
    calls = {"head": 0, "sample": 0}
    head = model.teacher.heads["object"]
    original_head = head.forward
    monkeypatch.setattr(head, "forward", lambda x: calls.__setitem__("head", calls["head"] + 1) or original_head(x))
    from mmdet3d.models.distillers.losses import tig_modules
    original_sample = tig_modules.sample_box_keypoints
    monkeypatch.setattr(tig_modules, "sample_box_keypoints",
                        lambda *a, **k: calls.__setitem__("sample", calls["sample"] + 1) or original_sample(*a, **k))
    torch.manual_seed(0)
    cached = model(batch)
    assert calls == {"head": 0, "sample": 2}  # one student and one teacher sampling for both TiG terms
    # Without the per-step cache (each loss samples for itself) the values are the same.
    student = named_tensors(*model.student.forward_features(batch))
    with torch.no_grad():
        teacher = named_tensors(*model.teacher.forward_features(batch))
    for loss in model.distill_losses:
        assert torch.allclose(loss(student, teacher, batch, model.context), cached[f"loss/distill/{loss.name}"], rtol=1e-5)
    heads = _distiller(path, distill_losses=[dict(type="InterKeypointLoss", teacher="heatmaps", lattice=4)])
    assert heads.teacher_heads_needed
