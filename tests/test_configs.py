"""Every shipped config: loads, holds the runtime keys, builds, and runs.

Synthetic configs train one step (forward + backward) on a random batch of their own image size;
paper-scale nuScenes configs run one forward pass on the real keyframe (batch 1, CPU) and give
the 180x180 BEV the papers use.
"""
from pathlib import Path

import pytest
import torch

from mmdet3d.datasets.builder import PIPELINES
from mmdet3d.datasets.example_batches import add_depth_targets, keyframe_batch
from mmdet3d.models import build_model
from mmdet3d.models.fusion_models import BEVFusion
from mmdet3d.utils.config import load_config
from keyframe_paths import KEYFRAME
from keyframe_paths import PKL as KEYFRAME_PKL
from model_inputs import make_batch, one_thread  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml") if p.name != "default.yaml")
DISTILL = [c for c in SHIPPED if "/distill/" in c]
DETECTION = [c for c in SHIPPED if c not in DISTILL]
SYNTHETIC = [c for c in DETECTION if c.startswith("configs/synthetic/")]
NUSCENES = [c for c in DETECTION if c.startswith("configs/nuscenes/")]

RUNTIME_KEYS = ["seed", "deterministic", "max_epochs", "optimizer.type", "optimizer.lr", "optimizer.weight_decay",
                "optimizer_config.grad_clip.max_norm", "lr_config.policy", "eval_interval", "eval_render_sample", "checkpoint_interval",
                "data.samples_per_gpu", "data.workers_per_gpu", "model.type"]
DATASET_KEYS = ["type", "dataset_root", "ann_file", "pipeline", "object_classes", "modality", "test_mode"]


def lookup(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def expected_bev_grid(model_cfg):
    """(X, Y) of each encoder's BEV map, from the config's bounds."""
    grids = {}
    camera = model_cfg["encoders"]["camera"]
    if camera is not None:
        vt = camera["vtransform"]
        grids["camera"] = tuple(round((b[1] - b[0]) / b[2]) // vt.get("downsample", 1) for b in (vt["xbound"], vt["ybound"]))
    lidar = model_cfg["encoders"]["lidar"]
    if lidar is not None:
        pfn = lidar["backbone"]["pts_voxel_encoder"]
        r, v = pfn["point_cloud_range"], pfn["voxel_size"]
        grids["lidar"] = (round((r[3] - r[0]) / v[0]), round((r[4] - r[1]) / v[1]))
    return grids


def test_configs_are_shipped():
    assert {"configs/synthetic/det/centerhead/second/camera+lidar/convfuser.yaml",
            "configs/synthetic/det/centerhead/second/camera/lss.yaml",
            "configs/synthetic/det/centerhead/second/lidar/pointpillars.yaml",
            "configs/nuscenes/det/centerhead/lssfpn/camera+lidar/resnet50/convfuser.yaml",
            "configs/nuscenes/det/centerhead/lssfpn/camera/resnet50/lss.yaml"} <= set(SHIPPED)


def check_runtime_and_pipelines(cfg):
    for key in RUNTIME_KEYS:
        lookup(cfg, key)
    for split in ("train", "val", "test"):
        dataset = cfg["data"][split]
        assert [k for k in DATASET_KEYS if k not in dataset] == []
        assert dataset["object_classes"] == cfg["object_classes"]
        steps = [step["type"] for step in dataset["pipeline"]]
        assert [s for s in steps if s not in PIPELINES] == [], f"unregistered pipeline steps in {split}"
        assert steps[-1] == "Collect3D"
    assert cfg["data"]["test"]["test_mode"] is True and cfg["data"]["train"]["test_mode"] is False


def loads_points(pipeline) -> bool:
    return any("Points" in step["type"] for step in pipeline)


@pytest.mark.parametrize("path", DETECTION)
def test_config_keys_pipelines_and_build(path):
    cfg = load_config(str(ROOT / path))
    check_runtime_and_pipelines(cfg)
    encoders = cfg["model"]["encoders"]
    camera_only = encoders["lidar"] is None and encoders["camera"]["vtransform"]["type"] != "DepthLSSTransform"
    for split in ("val", "test"):  # a camera-only model is evaluated without reading LiDAR
        assert loads_points(cfg["data"][split]["pipeline"]) != camera_only, f"{path} data.{split}"
    if cfg["model"].get("depth_loss"):
        assert "DepthTargets" in [step["type"] for step in cfg["data"]["train"]["pipeline"]]

    model = build_model(cfg["model"])
    grids = expected_bev_grid(cfg["model"])
    assert len(set(grids.values())) == 1, f"encoder BEV grids differ: {grids}"
    encoders = cfg["model"]["encoders"]
    assert sorted(model.encoders) == sorted(k for k, v in encoders.items() if v is not None)
    assert (model.fuser is None) == (len(model.encoders) == 1)
    head = model.heads["object"]
    assert sorted(c for t in head.task_classes for c in t) == sorted(cfg["object_classes"])
    assert head.in_channels == model.decoder["neck"].out_channels


@pytest.mark.parametrize("path", SYNTHETIC)
def test_synthetic_config_trains_one_step(path, one_thread):
    torch.manual_seed(0)
    cfg = load_config(str(ROOT / path))
    model = build_model(cfg["model"]).train()
    height, width = cfg["image_size"]
    batch = make_batch(batch_size=2, num_cams=6, image_size=(height, width), num_boxes=(8, 0), extent=40.0,
                       num_points=4000)
    if model.depth_loss is not None:
        batch = add_depth_targets(batch, cfg["depth_stride"], cfg["model_dbound"])
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and len(losses) == 2 * len(model.heads["object"].task_classes) + (model.depth_loss is not None)
    total.backward()
    # parameters that only distillation losses train (SimDistill's simulated-LiDAR map) get none here
    distill_only = getattr(model, "distill_only_parameters", ())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and not n.startswith(distill_only)]
    assert not missing
    features = model.extract_features(batch)
    grid = next(iter(expected_bev_grid(cfg["model"]).values()))
    assert tuple(features["fused_bev"].shape[-2:]) == grid
    model.eval()
    with torch.no_grad():
        results = model(batch)
    assert len(results) == 2 and all(torch.isfinite(r["boxes_3d"]).all() for r in results)


@pytest.fixture(scope="module")
def keyframe_batches():
    """Per nuScenes config: the keyframe through that config's test pipeline, collated (B = 1)."""
    if not KEYFRAME_PKL.is_file():
        pytest.skip(f"real nuScenes keyframe not found at {KEYFRAME}")
    return lambda cfg: keyframe_batch(cfg, KEYFRAME)


@pytest.mark.parametrize("path", NUSCENES)
def test_nuscenes_config_forward_on_real_keyframe(path, keyframe_batches, one_thread):
    torch.manual_seed(0)
    cfg = load_config(str(ROOT / path))
    batch = keyframe_batches(cfg)
    assert tuple(batch["img"].shape) == (1, 6, 3, 256, 704)
    model = build_model(cfg["model"]).eval()
    with torch.no_grad():
        features = model.extract_features(batch)
        preds = {"object": model.heads["object"](features["decoder_out"])}
        results = model.predict(batch, preds)
    camera = "camera" in model.encoders
    assert tuple(features["fused_bev"].shape) == (1, model.feature_channels["fused_bev"], 180, 180)
    if camera:
        assert tuple(features["camera_bev"].shape) == (1, 80, 180, 180)
        assert tuple(features["depth_logits"].shape) == (1, 6, 118, 32, 88)
    if "lidar" in model.encoders:
        assert tuple(features["lidar_bev"].shape) == (1, 64, 180, 180)
        assert features["lidar_bev"].abs().sum() > 0
    assert tuple(features["decoder_out"].shape) == (1, 256, 180, 180)
    assert tuple(preds["object"][0]["heatmap"].shape) == (1, 1, 180, 180)
    assert len(results) == 1 and results[0]["boxes_3d"].shape[1] == 9
    assert torch.isfinite(features["decoder_out"]).all()


@pytest.mark.parametrize("path", DISTILL)
def test_distill_configs_build_a_camera_only_student(path, tmp_path):
    from mmdet3d.apis.runner import build_model_from_config
    from mmdet3d.utils.checkpoint import save_checkpoint

    cfg = load_config(str(ROOT / path))
    check_runtime_and_pipelines(cfg)
    model_cfg = cfg["model"]
    assert model_cfg["type"] == "BEVDistiller" and (model_cfg["distill_losses"] or model_cfg["init_from_teacher"])
    teacher = build_model(load_config(str(ROOT / model_cfg["teacher"]))["model"])
    model_cfg["teacher_checkpoint"] = save_checkpoint(str(tmp_path / "teacher.pth"), teacher)
    model = build_model(model_cfg)
    assert not model.student.reads_points and model.teacher.feature_channels["decoder_out"] == model.student.feature_channels["decoder_out"]
    assert loads_points(cfg["data"]["train"]["pipeline"]) and "DepthTargets" in [s["type"] for s in cfg["data"]["train"]["pipeline"]]
    for split in ("val", "test"):
        assert not loads_points(cfg["data"][split]["pipeline"]), f"{path} data.{split} reads LiDAR"
    student = build_model_from_config(cfg, inference=True)  # what tools/test.py builds: no teacher
    assert isinstance(student, BEVFusion) and "lidar" not in student.encoders
