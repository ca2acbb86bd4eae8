"""tools/visualize.py and mmdet3d/apis/visualize on the small embedded dataset and the real keyframe.

Renders are checked against geometry computed without the renderer: a GT box drawn in BEV covers
the pixels of its LiDAR points, a box projected into a camera encloses the independently projected
points inside it; the files, their sizes, the index and the error messages through the tool; the
index in a real headless browser; the BEV render that training logs to TensorBoard.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from mmdet3d.apis.runner import build_dataset_from_config, build_model_from_config, import_custom_modules
from mmdet3d.apis.train import Trainer
from mmdet3d.apis.visualize import (CAMERA_TILE_WIDTH, config_bev_range, eval_bev_image, read_sample, render_bev, render_cameras,
                                    sample_batch, select_indices)
from mmdet3d.core.bbox import center_distance_matches, points_in_boxes
from mmdet3d.core.visualize import TITLE_HEIGHT
from mmdet3d.utils.checkpoint import save_checkpoint
from mmdet3d.utils.config import ConfigError, load_config
from mmdet3d.utils.distributed import DistInfo
from mmdet3d.utils.logging import RunLogger
from keyframe_paths import KEYFRAME, PKL, needs_keyframe
from nuscenes_synthetic_data import synthetic_nuscenes
from tool_runner import REPO, TEACHER_CONFIG, check_ok, needs_mpirun, needs_torchpack, run_tool, run_tool_inprocess

TIG_INSTANT = os.path.join(REPO, "configs", "synthetic", "distill", "tig", "instant.yaml")
CAMERA_CONFIG = os.path.join(REPO, "configs", "synthetic", "det", "centerhead", "second", "camera", "lss.yaml")
NUSCENES_CONFIG = os.path.join(REPO, "configs", "nuscenes", "det", "centerhead", "lssfpn", "camera+lidar", "resnet50", "convfuser.yaml")
BEV_SIZE, CAMERA_SIZE, DISTILL_SIZE = (1000, 830), (1440, 570), (960, 1056)
NUSCENES_PLACES = {"CAM_FRONT_LEFT": (0, 0), "CAM_FRONT": (0, 1), "CAM_FRONT_RIGHT": (0, 2),
                   "CAM_BACK_LEFT": (1, 0), "CAM_BACK": (1, 1), "CAM_BACK_RIGHT": (1, 2)}


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    """The synthetic configs on the session's small dataset (320x180 images scaled by 1.1 to the
    config's 352-pixel width, as tool_runner.teacher_fast)."""
    root = synthetic_nuscenes(tmp_path_factory)["root"]
    return ["--dataset_root", root.rstrip("/") + "/", "--augment2d.resize", "[[1.1,1.1],[1.1,1.1]]"]


@pytest.fixture(scope="module")
def val_set(overrides):
    cfg = load_config(TEACHER_CONFIG, overrides)
    import_custom_modules(cfg)
    return cfg, build_dataset_from_config(cfg, "val", inference=True)


@pytest.fixture(scope="module")
def checkpoints(overrides, tmp_path_factory) -> dict[str, str]:
    """Seeded untrained weights: the camera+LiDAR teacher and a TiG distiller over it."""
    folder = tmp_path_factory.mktemp("viz_checkpoints")
    torch.manual_seed(0)
    teacher = str(folder / "teacher.pth")
    save_checkpoint(teacher, build_model_from_config(load_config(TEACHER_CONFIG, overrides)))
    tig = str(folder / "tig.pth")
    save_checkpoint(tig, build_model_from_config(load_config(TIG_INSTANT, [*overrides, "--model.teacher_checkpoint", teacher])))
    return {"teacher": teacher, "tig": tig}


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=-1)


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _not_enclosed(outline: np.ndarray, pixels: np.ndarray) -> list[tuple[int, int]]:
    """The (row, col) pixels neither on the outline (within 1 px) nor between outline pixels to
    their left and right and above and below."""
    near = _dilate(outline)
    bad = []
    for r, c in pixels:
        row, col = outline[r], outline[:, c]
        if not (near[r, c] or (row[:c].any() and row[c + 1:].any() and col[:r].any() and col[r + 1:].any())):
            bad.append((int(r), int(c)))
    return bad


def _no_boxes(sample):
    return replace(sample, gt_boxes=np.zeros((0, 9)), gt_labels=np.zeros(0, np.int64))


def _turned(sample, theta: float):
    """The sample's points and boxes turned by ``theta`` about z (the generated vehicles are aligned
    with the axes, where a box drawn with the wrong sense of rotation would still fit)."""
    c, s = np.cos(theta), np.sin(theta)
    rotation = np.array([[c, -s], [s, c]])
    points, boxes = sample.points.copy(), sample.gt_boxes.copy()
    points[:, :2] = points[:, :2] @ rotation.T
    boxes[:, :2] = boxes[:, :2] @ rotation.T
    boxes[:, 6] += theta
    return replace(sample, points=points, gt_boxes=boxes)


@pytest.mark.parametrize("theta", [0.0, 0.5])
def test_gt_box_in_bev_covers_its_points(val_set, theta):
    cfg, dataset = val_set
    sample = _turned(read_sample(dataset, 0), theta)
    inside = points_in_boxes(sample.points[:, :3], sample.gt_boxes).numpy()  # (P, M)
    k = int(inside.sum(0).argmax())
    assert inside[:, k].sum() >= 20 and sample.gt_boxes[k, 3] > 2 * sample.gt_boxes[k, 4]  # an elongated vehicle
    bev_range = config_bev_range(cfg)

    def render(s) -> np.ndarray:  # the map region only (the legend's height bar depends on the points)
        return np.asarray(render_bev(s, bev_range, dataset.object_classes))[TITLE_HEIGHT:, :800]

    empty = render(replace(_no_boxes(sample), points=None))
    outline = _changed(render(replace(sample, gt_boxes=sample.gt_boxes[k:k + 1], gt_labels=sample.gt_labels[k:k + 1], points=None)), empty)
    drawn = np.argwhere(_changed(render(replace(_no_boxes(sample), points=sample.points[inside[:, k]])), empty))
    assert len(drawn) >= 10 and _not_enclosed(outline, drawn) == []
    # and the box sits where the documented transform puts it: x to the right, y up, 800 px over the range
    x_min, y_min, x_max, y_max = bev_range
    res = (x_max - x_min) / 800
    rows, cols = np.nonzero(outline)
    box = sample.gt_boxes[k]
    assert abs((cols.min() + cols.max()) / 2 - (box[0] - x_min) / res) <= 2
    assert abs((rows.min() + rows.max()) / 2 - (y_max - box[1]) / res) <= 2


def test_projected_box_encloses_the_projection_of_its_points(val_set):
    _, dataset = val_set
    sample, info = read_sample(dataset, 0), dataset.get_data_info(0)
    inside = points_in_boxes(sample.points[:, :3], sample.gt_boxes).numpy()
    homog = np.concatenate([sample.points[:, :3], np.ones((len(sample.points), 1))], axis=1)
    with Image.open(sample.image_paths[0]) as im:
        width, height = im.size
    best = None  # (points seen, box, camera, pixels) of the box wholly in front of a camera with the most points in view
    for n in range(len(sample.camera_names)):
        camera = homog @ info["lidar2camera"][n].astype(np.float64).T  # independent of the renderer: K @ (R p + t)
        depth = camera[:, 2]
        uv = (camera[:, :3] @ info["camera_intrinsics"][n, :3, :3].astype(np.float64).T)[:, :2] / np.maximum(depth, 1e-6)[:, None]
        for k in range(len(sample.gt_boxes)):
            member = inside[:, k]
            seen = member & (depth > 1.0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
            if seen.sum() == member.sum() and member.sum() >= 20 and (best is None or member.sum() > best[0]):
                best = (int(member.sum()), k, n, uv[member])
    assert best is not None
    _, k, n, uv = best
    empty = np.asarray(render_cameras(_no_boxes(sample)))
    one_box = replace(sample, gt_boxes=sample.gt_boxes[k:k + 1], gt_labels=sample.gt_labels[k:k + 1])
    wireframe = _changed(np.asarray(render_cameras(one_box)), empty)
    wireframe[:TITLE_HEIGHT] = False  # the title counts the boxes
    row, col = NUSCENES_PLACES[sample.camera_names[n]]
    scale = CAMERA_TILE_WIDTH / width
    tile_h = round(CAMERA_TILE_WIDTH * height / width)
    top, left = TITLE_HEIGHT + row * tile_h, col * CAMERA_TILE_WIDTH
    tile = wireframe[top:top + tile_h, left:left + CAMERA_TILE_WIDTH]
    assert tile.sum() > 0
    pixels = np.unique(np.floor(uv[:, ::-1] * scale).astype(int), axis=0)  # (v, u) -> (row, col)
    assert _not_enclosed(tile, pixels) == []
    # the tile shows that camera's image in the nuScenes layout (compared away from the name label)
    with Image.open(sample.image_paths[n]) as im:
        expected = np.asarray(im.convert("RGB").resize((CAMERA_TILE_WIDTH, tile_h)), dtype=np.float64)
    np.testing.assert_allclose(empty[top + 20:top + tile_h, left:left + CAMERA_TILE_WIDTH], expected[20:], atol=1)


def test_camera_only_model_gets_lidar_for_display_only(val_set):
    _, dataset = val_set
    assert "display only" in read_sample(dataset, 0, model_reads_points=False).points_note
    assert "reads LiDAR" in read_sample(dataset, 0, model_reads_points=True).points_note


def _links(out_dir: str) -> set[str]:
    text = open(os.path.join(out_dir, "index.html")).read()
    return set(re.findall(r'(?:href|src)="([^"]+)"', text))


def _pngs(out_dir: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), out_dir) for d, _, files in os.walk(out_dir) for f in files if f.endswith(".png")}


def _check_png(path: str, size: tuple[int, int]) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        assert (im.format, im.size) == ("PNG", size), path
        im.verify()


@pytest.fixture(scope="module")
def gt_renders(overrides, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("viz_gt"))
    check_ok(run_tool_inprocess("visualize", TEACHER_CONFIG, *overrides, "--samples", "2", "--out-dir", out))
    return out


def test_gt_mode_writes_documented_pngs_and_an_index_linking_them(gt_renders, val_set):
    _, dataset = val_set
    tokens = [info["token"] for info in dataset.data_infos[:2]]
    assert _pngs(gt_renders) == {f"{kind}/{t}.png" for kind in ("bev", "camera") for t in tokens}
    for t in tokens:
        _check_png(os.path.join(gt_renders, "bev", f"{t}.png"), BEV_SIZE)
        _check_png(os.path.join(gt_renders, "camera", f"{t}.png"), CAMERA_SIZE)
    assert _links(gt_renders) == _pngs(gt_renders)
    text = open(os.path.join(gt_renders, "index.html")).read()
    for i, t in enumerate(tokens):
        assert f"<code>{t}</code></td><td>{len(dataset.get_ann_info(i)['gt_bboxes_3d'])}</td><td>&ndash;</td>" in text


def test_pred_mode_counts_and_distillation_maps(overrides, checkpoints, val_set, tmp_path):
    cfg, dataset = val_set
    model = build_model_from_config(cfg)
    model.load_state_dict(torch.load(checkpoints["teacher"], weights_only=True)["state_dict"])
    with torch.no_grad():
        output = model.eval()(sample_batch(dataset, 0))[0]
    threshold = float(output["scores_3d"].median())  # about half the predictions are drawn
    keep = output["scores_3d"] >= threshold
    out = str(tmp_path / "pred")
    check_ok(run_tool_inprocess("visualize", TEACHER_CONFIG, *overrides, "--checkpoint", checkpoints["teacher"], "--mode", "pred",
                                "--samples", "1", "--score-thr", repr(threshold), "--out-dir", out))
    ann = dataset.get_ann_info(0)
    matched = (center_distance_matches(ann["gt_bboxes_3d"], ann["gt_labels_3d"], output["boxes_3d"][keep].numpy(),
                                       output["scores_3d"][keep].numpy(), output["labels_3d"][keep].numpy()) >= 0).sum()
    token = dataset.data_infos[0]["token"]
    assert 0 < int(keep.sum()) < len(keep) and f"<td>{len(ann['gt_bboxes_3d'])}</td><td>{int(keep.sum())}</td><td>{matched}</td>" in open(
        os.path.join(out, "index.html")).read()
    _check_png(os.path.join(out, "bev", f"{token}.png"), BEV_SIZE)

    out = str(tmp_path / "distill")
    check_ok(run_tool_inprocess("visualize", TIG_INSTANT, *overrides, "--checkpoint", checkpoints["tig"], "--tokens", token,
                                "--model.teacher_checkpoint", checkpoints["teacher"], "--out-dir", out))
    assert _pngs(out) == {f"{kind}/{token}.png" for kind in ("bev", "camera", "distill")} == _links(out)
    _check_png(os.path.join(out, "distill", f"{token}.png"), DISTILL_SIZE)


def _error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_token_and_mismatched_checkpoint_fail_clearly(overrides, checkpoints, tmp_path):
    line = _error_line(run_tool_inprocess("visualize", TEACHER_CONFIG, *overrides, "--tokens", "no-such-token", "--out-dir", str(tmp_path)))
    assert "'no-such-token'" in line and "nuscenes_infos_val.pkl" in line
    line = _error_line(run_tool_inprocess("visualize", CAMERA_CONFIG, *overrides, "--checkpoint", checkpoints["teacher"],
                                          "--out-dir", str(tmp_path)))
    assert checkpoints["teacher"] in line and "does not fit this model" in line
    line = _error_line(run_tool_inprocess("visualize", TEACHER_CONFIG, *overrides, "--mode", "pred", "--out-dir", str(tmp_path)))
    assert "--checkpoint" in line
    absent = ["--checkpoint", checkpoints["tig"], "--model.teacher_checkpoint", str(tmp_path / "absent.pth"), "--samples", "1"]
    line = _error_line(run_tool_inprocess("visualize", TIG_INSTANT, *overrides, *absent, "--out-dir", str(tmp_path)))
    assert "teacher_checkpoint not found" in line and "absent.pth" in line and "--no-distill" in line
    check_ok(run_tool_inprocess("visualize", TIG_INSTANT, *overrides, *absent, "--no-distill", "--out-dir", str(tmp_path / "student")))
    assert {os.path.dirname(p) for p in _pngs(str(tmp_path / "student"))} == {"bev", "camera"}
    with pytest.raises(ValueError, match="--samples must be >= 1"):
        select_indices(build_dataset_from_config(load_config(TEACHER_CONFIG, overrides), "val", inference=True), samples=0)


@needs_keyframe
def test_real_keyframe_gt_mode(tmp_path):
    out = str(tmp_path)
    check_ok(run_tool_inprocess("visualize", NUSCENES_CONFIG, "--dataset_root", str(KEYFRAME) + "/", "--data.val.ann_file", PKL.name,
                                "--out-dir", out))
    token = "ca9a282c9e77460f8360f564131a8af5"
    _check_png(os.path.join(out, "bev", f"{token}.png"), BEV_SIZE)
    _check_png(os.path.join(out, "camera", f"{token}.png"), CAMERA_SIZE)  # 1600x900 images: 480x270 tiles
    assert _links(out) == _pngs(out)


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _browser_image_states(index: str) -> list[str]:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=10000", "--dump-dom", f"file://{index}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tags = re.findall(r"<img[^>]*>", proc.stdout)
    return ["loaded" if "data-loaded" in tag else "broken" if "data-broken" in tag else "pending" for tag in tags]


@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: install Debian's chromium (apt-get install -y chromium)")
def test_index_images_load_in_a_headless_browser(gt_renders, tmp_path):
    states = _browser_image_states(os.path.join(gt_renders, "index.html"))
    assert states == ["loaded"] * 4
    # the check sees a missing file: the same index with one render removed
    copy = str(tmp_path / "copy")
    shutil.copytree(gt_renders, copy)
    os.remove(os.path.join(copy, sorted(_pngs(copy))[0]))
    assert sorted(_browser_image_states(os.path.join(copy, "index.html"))) == ["broken"] + ["loaded"] * 3


@needs_mpirun
@needs_torchpack
def test_dist_run_ranks_render_their_shares(overrides, val_set, tmp_path):
    _, dataset = val_set
    out = str(tmp_path / "viz")
    proc = check_ok(run_tool("visualize", TEACHER_CONFIG, *overrides, "--samples", "3", "--out-dir", out, launcher="torchpack",
                             timeout=600))
    tokens = [info["token"] for info in dataset.data_infos[:3]]
    assert _pngs(out) == {f"{kind}/{t}.png" for kind in ("bev", "camera") for t in tokens} == _links(out)
    text = open(os.path.join(out, "index.html")).read()
    assert [text.index(t) for t in tokens] == sorted(text.index(t) for t in tokens)  # dataset order
    assert "with 2 process(es)" in proc.stdout


def test_training_logs_the_bev_render_of_one_val_sample_at_evaluation(overrides, val_set, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, dataset = val_set
    cfg = load_config(TEACHER_CONFIG, [*overrides, "--data.workers_per_gpu", "0", "--eval_render_sample", "1"])
    model = build_model_from_config(cfg)
    seen = {}

    def evaluate(results, out_dir=None, metric="bbox"):  # the devkit's scores are not under test here
        seen["results"] = results
        return {"mAP": 0.0}

    monkeypatch.setattr(dataset, "evaluate", evaluate)
    logger = RunLogger(str(tmp_path), rank=0)
    Trainer(model, dataset, cfg, run_dir=str(tmp_path), info=DistInfo(launcher="none"), logger=logger, val_dataset=dataset).evaluate(0)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    (event,) = events.Images("val/bev_render")
    assert (event.width, event.height) == BEV_SIZE
    logged = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(logged, eval_bev_image(model, dataset, 1, seen["results"][1], cfg))
    with pytest.raises(ConfigError, match="eval_render_sample 99: must be a sample index of data.val"):
        Trainer(model, dataset, {**cfg, "eval_render_sample": 99}, run_dir=str(tmp_path), info=DistInfo(launcher="none"),
                logger=logger, val_dataset=dataset)
