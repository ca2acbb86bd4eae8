"""The synthetic nuScenes-format dataset: scene layout, and a small generated dataset read back
through the nuscenes-devkit as an outside user would. (Rig, ray casting and sensor rendering:
``test_synthetic_sensors.py``.)"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from shapely.geometry import Polygon

from mmdet3d.core.bbox import box_corners, points_in_boxes
from mmdet3d.core.points import load_points
from mmdet3d.datasets.synthetic import DatasetWriteError, generate_dataset, select_scenes
from mmdet3d.datasets.synthetic.camera import render_camera
from mmdet3d.datasets.synthetic.coverage import CLASS_RANGE, DETECTION_CLASSES, class_coverage
from mmdet3d.datasets.synthetic.rig import CAMERA_CHANNELS, pose_matrix
from mmdet3d.datasets.synthetic.scene import build_scene
from mmdet3d.datasets.synthetic.shapes import PART_MARGIN, SIZE_PRIORS
from mmdet3d.datasets.synthetic.writer import build_world

TEN_CLASSES = {"car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
               "pedestrian", "traffic_cone"}
SMALL = dict(num_scenes=2, keyframes_per_scene=4, image_size=(320, 180), seed=3)


# ---------------------------------------------------------------- scene layout


def _bev_polygon(box):
    return Polygon(box_corners(box[None])[0, :4, :2].numpy())


def test_layout_has_all_classes_realistic_sizes_and_no_overlaps():
    layout = build_scene(np.random.default_rng([5, 0]), 9.5)
    assert set(layout.labels) == TEN_CLASSES
    for label, size in zip(layout.labels, layout.sizes):
        prior = np.asarray(SIZE_PRIORS[label])
        if label not in ("bicycle", "motorcycle", "pedestrian"):  # riders / sitting change heights
            assert np.all(np.abs(size / prior - 1) <= 0.0601), (label, size)
    for t in (0.0, 4.5, 9.5):
        x, y, yaw, _, _ = layout.motion.state(t)
        ex, _, _ = layout.ego_pose(t)
        near = np.flatnonzero(np.abs(x - ex) < 70)
        boxes = np.column_stack([x, y, layout.sizes[:, 2] / 2, layout.sizes, yaw])[near]
        polys = [_bev_polygon(b) for b in boxes]
        for i in range(len(polys)):
            for j in range(i + 1, len(polys)):
                assert polys[i].intersection(polys[j]).area < 1e-9, (layout.labels[near[i]], layout.labels[near[j]])
        # Parts stay inside their annotation box (by the margin).
        parts = layout.boxes_at(t)
        is_part = parts["owner"] >= 0
        owner = parts["owner"][is_part]
        corners = box_corners(np.column_stack([parts["center"][is_part], 2 * parts["half"][is_part],
                                               parts["yaw"][is_part]]))
        annot = np.column_stack([x, y, layout.sizes[:, 2] / 2, layout.sizes - [PART_MARGIN, PART_MARGIN, 0], yaw])
        for k in np.flatnonzero(np.isin(owner, near)):
            assert points_in_boxes(corners[k], annot[owner[k]][None]).all()


def test_moving_objects_follow_smooth_paths():
    layout = build_scene(np.random.default_rng([5, 1]), 9.5)
    moving = np.abs(layout.motion.speed) > 0
    assert moving.sum() > 20 and (~moving).sum() > 20
    dt = 1e-3
    for t in (1.0, 5.0):
        x0, y0, yaw, vx, vy = layout.motion.state(t)
        x1, y1, *_ = layout.motion.state(t + dt)
        np.testing.assert_allclose(((x1 - x0) / dt)[moving], vx[moving], atol=1e-6)
        np.testing.assert_allclose(((y1 - y0) / dt)[moving], vy[moving], atol=1e-3)
        np.testing.assert_allclose(np.arctan2(vy, vx)[moving], yaw[moving], atol=1e-9)
        assert np.all(np.abs(np.sin(yaw - layout.motion.heading))[moving] < 0.05)  # gentle curvature


# ---------------------------------------------------------------- the generated dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from nuscenes import NuScenes

    root = tmp_path_factory.mktemp("synthetic")
    summary = generate_dataset(str(root), progress=False, workers=1, **SMALL)
    nusc = NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False)
    return root, summary, nusc


def test_devkit_loads_and_files_exist(dataset):
    from nuscenes.utils import splits

    root, summary, nusc = dataset
    assert len(nusc.scene) == summary["scenes"] == 2 and len(nusc.sample) == 8
    names = [s["name"] for s in nusc.scene]
    assert names[0] in splits.mini_train and names[1] in splits.mini_val
    for sd in nusc.sample_data:
        path = root / sd["filename"]
        assert path.is_file(), path
        name = Path(sd["filename"]).name
        log = nusc.get("log", nusc.get("scene", nusc.get("sample", sd["sample_token"])["scene_token"])["log_token"])
        assert name.startswith(f"{log['logfile']}__{sd['channel']}__{sd['timestamp']}")
        if sd["channel"] == "LIDAR_TOP":
            assert sd["filename"].startswith("samples/" if sd["is_key_frame"] else "sweeps/")
            assert path.stat().st_size % 20 == 0 and path.stat().st_size > 20 * 15000
        else:
            assert sd["is_key_frame"] and cv2.imread(str(path)).shape == (180, 320, 3)
    for m in nusc.map:
        assert (root / m["filename"]).is_file()
    categories = {c["name"] for c in nusc.category}
    assert {"vehicle.car", "human.pedestrian.adult", "movable_object.trafficcone", "vehicle.bus.rigid",
            "vehicle.construction", "vehicle.trailer", "movable_object.barrier"} <= categories
    assert [v["level"] for v in sorted(nusc.visibility, key=lambda v: v["token"])] == ["v0-40", "v40-60", "v60-80",
                                                                                        "v80-100"]


def test_timestamps_chains_and_ego_motion(dataset):
    _, _, nusc = dataset
    for scene in nusc.scene:
        sample = nusc.get("sample", scene["first_sample_token"])
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        stamps, keys, poses = [], [], []
        while True:
            stamps.append(lidar["timestamp"])
            keys.append(lidar["is_key_frame"])
            poses.append(nusc.get("ego_pose", lidar["ego_pose_token"])["translation"])
            if not lidar["next"]:
                break
            nxt = nusc.get("sample_data", lidar["next"])
            assert nxt["prev"] == lidar["token"]
            lidar = nxt
        assert len(stamps) == 31 and set(np.diff(stamps)) == {50_000}
        assert np.flatnonzero(keys).tolist() == [0, 10, 20, 30]
        steps = np.linalg.norm(np.diff(np.array(poses)[::10, :2], axis=0), axis=1)
        assert np.all(steps > 1.5) and np.all(steps < 6)  # 4-9 m/s over 0.5 s
        samples = [nusc.get("sample", scene["first_sample_token"])]
        while samples[-1]["next"]:
            samples.append(nusc.get("sample", samples[-1]["next"]))
        assert len(samples) == scene["nbr_samples"] == 4
        assert set(np.diff([s["timestamp"] for s in samples])) == {500_000}
        for s in samples:
            assert set(s["data"]) == set(CAMERA_CHANNELS) | {"LIDAR_TOP"}
            assert len({nusc.get("sample_data", t)["timestamp"] for t in s["data"].values()}) == 1


def test_annotations_are_consistent(dataset):
    _, summary, nusc = dataset
    assert set(summary["annotations_per_class"]) >= {"car", "pedestrian", "traffic_cone"}
    per_sample = [len(s["anns"]) for s in nusc.sample]
    assert 15 <= np.mean(per_sample) <= 80, per_sample
    allowed = {"vehicle": {"vehicle.moving", "vehicle.parked", "vehicle.stopped"},
               "cycle": {"cycle.with_rider", "cycle.without_rider"},
               "human": {"pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"}}
    for ann in nusc.sample_annotation:
        attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        cat = ann["category_name"]
        if cat.startswith("movable_object"):
            assert attrs == []
        else:
            group = "cycle" if cat in ("vehicle.bicycle", "vehicle.motorcycle") else cat.split(".")[0]
            assert len(attrs) == 1 and attrs[0] in allowed[group], (cat, attrs)
        assert ann["visibility_token"] in {"1", "2", "3", "4"} and ann["num_radar_pts"] == 0
        w, l, h = ann["size"]
        if cat in ("vehicle.car", "vehicle.bus.rigid", "vehicle.truck", "vehicle.trailer"):
            assert l > 1.5 * w  # nuScenes order [w, l, h]
        assert abs(ann["translation"][2] - h / 2) < 1e-9  # gravity centre, ground at z = 0
    for inst in nusc.instance:
        chain, token = [], inst["first_annotation_token"]
        while token:
            chain.append(token)
            token = nusc.get("sample_annotation", token)["next"]
        assert len(chain) == inst["nbr_annotations"] and chain[-1] == inst["last_annotation_token"]
        assert len({nusc.get("sample_annotation", t)["instance_token"] for t in chain}) == 1
    assert max(a["num_lidar_pts"] for a in nusc.sample_annotation) > 300


def _global_objects(world, t):
    """Scene objects at time t in the global frame: centres (N, 2) and velocities (N, 2)."""
    x, y, _, vx, vy = world.layout.motion.state(t)
    m = world.scene2global
    return (np.column_stack([x, y, np.ones_like(x)]) @ m.T)[:, :2], np.column_stack([vx, vy]) @ m[:2, :2].T


def test_box_velocity_matches_generator_speed(dataset):
    _, _, nusc = dataset
    checked = 0
    for index, scene in enumerate(nusc.scene):
        world = build_world(SMALL["seed"], index, SMALL["keyframes_per_scene"])
        t0 = nusc.get("sample", scene["first_sample_token"])["timestamp"]
        for ann in nusc.sample_annotation:
            sample = nusc.get("sample", ann["sample_token"])
            if sample["scene_token"] != scene["token"] or not (ann["prev"] and ann["next"]):
                continue
            centers, velocities = _global_objects(world, (sample["timestamp"] - t0) * 1e-6)
            obj = np.argmin(np.linalg.norm(centers - ann["translation"][:2], axis=1))
            assert np.linalg.norm(centers[obj] - ann["translation"][:2]) < 1e-6
            speed = np.linalg.norm(velocities[obj])
            estimate = nusc.box_velocity(ann["token"])[:2]
            if speed > 0:
                assert np.linalg.norm(estimate - velocities[obj]) <= 0.02 * speed, (estimate, velocities[obj])
                checked += 1
            else:
                assert np.linalg.norm(estimate) < 0.05
    assert checked >= 10


def test_num_lidar_pts_recounted_from_files(dataset):
    from nuscenes.utils.data_classes import Box
    from nuscenes.utils.geometry_utils import points_in_box
    from pyquaternion import Quaternion

    root, _, nusc = dataset
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        points = load_points(str(root / sd["filename"]), 5)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        xyz = points[:, :3].T.astype(np.float64)
        xyz = Quaternion(cs["rotation"]).rotation_matrix @ xyz + np.array(cs["translation"])[:, None]
        xyz = Quaternion(pose["rotation"]).rotation_matrix @ xyz + np.array(pose["translation"])[:, None]
        assert np.abs(points[:, 2]).max() < 30 and set(np.unique(points[:, 4])) <= set(range(32))
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            box = Box(ann["translation"], ann["size"], Quaternion(ann["rotation"]))
            assert points_in_box(box, xyz).sum() == ann["num_lidar_pts"], ann["category_name"]


def test_cameras_and_lidar_see_the_same_geometry(dataset):
    """Re-render one keyframe from the tables' poses: the JPEG matches, and the LiDAR points of
    each object project onto pixels the object covers."""
    root, _, nusc = dataset
    scene = nusc.scene[0]
    world = build_world(SMALL["seed"], 0, SMALL["keyframes_per_scene"])
    sample = nusc.get("sample", nusc.get("sample", scene["first_sample_token"])["next"])
    t = (sample["timestamp"] - nusc.get("sample", scene["first_sample_token"])["timestamp"]) * 1e-6
    g2s = np.linalg.inv(np.array([[*world.scene2global[0, :2], 0, world.scene2global[0, 2]],
                                  [*world.scene2global[1, :2], 0, world.scene2global[1, 2]],
                                  [0, 0, 1, 0], [0, 0, 0, 1]]))
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    points = load_points(str(root / lidar_sd["filename"]))
    cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
    lidar2global = pose_matrix(ego["rotation"], ego["translation"]) @ pose_matrix(cs["rotation"], cs["translation"])
    pts_global = np.c_[points[:, :3], np.ones(len(points))] @ lidar2global.T
    boxes = world.layout.boxes_at(t)
    n = len(world.layout.labels)
    hits, total = 0, 0
    for channel in CAMERA_CHANNELS:
        sd = nusc.get("sample_data", sample["data"][channel])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ego = nusc.get("ego_pose", sd["ego_pose_token"])
        cam2global = pose_matrix(ego["rotation"], ego["translation"]) @ pose_matrix(cs["rotation"], cs["translation"])
        K = np.array(cs["camera_intrinsic"])
        rgb, owner, depth, _, _ = render_camera(boxes, world.ground, world.layout.sun, g2s @ cam2global, K,
                                                (sd["width"], sd["height"]), n)
        jpeg = cv2.imread(str(root / sd["filename"]))[..., ::-1].astype(np.float32)
        assert np.abs(jpeg - rgb).mean() < 4.0, channel
        cam = (pts_global @ np.linalg.inv(cam2global).T)[:, :3]
        front = cam[:, 2] > 1.0
        uv = cam[front, :2] / cam[front, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
        col, row = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
        inside = (col >= 1) & (col < sd["width"] - 1) & (row >= 1) & (row < sd["height"] - 1)
        z = cam[front, 2][inside]
        col, row = col[inside], row[inside]
        # LiDAR points on a surface the camera also sees (same depth within 2 %), away from edges.
        seen = np.abs(depth[row, col] - z) < 0.02 * z
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            centers, _ = _global_objects(world, t)
            obj = int(np.argmin(np.linalg.norm(centers - ann["translation"][:2], axis=1)))
            in_box = points_in_boxes(pts_global[front][inside, :3], np.array(
                [[*ann["translation"], ann["size"][1], ann["size"][0], ann["size"][2],
                  2 * np.arctan2(ann["rotation"][3], ann["rotation"][0])]])).numpy()[:, 0]
            # Returns from the road under a raised body (truck floor, bus clearance, cycle frames)
            # lie inside the box too, but they are ground, which the camera labels as ground.
            above_ground = pts_global[front][inside, 2] > ann["translation"][2] - ann["size"][2] / 2 + 0.05
            sel = in_box & seen & above_ground
            total += sel.sum()
            hits += (owner[row[sel], col[sel]] == obj).sum()
    assert total > 200 and hits / total > 0.97, (hits, total)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_bytes_for_any_worker_count_and_no_stale_files(tmp_path):
    """Same seed -> same bytes, in-process or in two workers; re-generating into a root written
    with other arguments leaves nothing of the earlier run but keeps unrelated files."""
    args = dict(num_scenes=2, keyframes_per_scene=2, image_size=(64, 36), progress=False)
    generate_dataset(str(tmp_path / "a"), seed=7, workers=2, **args)
    reused = tmp_path / "b"
    generate_dataset(str(reused), seed=8, workers=1, **{**args, "num_scenes": 3, "keyframes_per_scene": 3})
    earlier = _files(reused)
    (reused / "samples" / "CAM_FRONT" / "mine.jpg").write_bytes(b"user")
    (reused / "nuscenes_infos_train.pkl").write_bytes(b"infos")
    generate_dataset(str(reused), seed=7, workers=1, **args)
    a, b = _files(tmp_path / "a"), _files(reused)
    assert b.pop("samples/CAM_FRONT/mine.jpg") == b"user" and b.pop("nuscenes_infos_train.pkl") == b"infos"
    assert len(a) > 60 and a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert earlier["v1.0-mini/sample_annotation.json"] != a["v1.0-mini/sample_annotation.json"]


def test_worker_exception_propagates(tmp_path):
    from mmdet3d.datasets.synthetic.generate import _run_parallel
    from mmdet3d.datasets.synthetic.writer import SceneTask

    tasks = [SceneTask(str(tmp_path / "missing"), i, f"scene-{i}", 2, (32, 18), 0) for i in range(2)]
    with pytest.raises(FileNotFoundError, match="missing"):
        _run_parallel(tasks, 2, lambda: None)


# ---------------------------------------------------------------- class coverage


@pytest.mark.parametrize("keyframes", [4, 20, 41])
def test_every_scene_has_all_classes_in_range_in_every_keyframe(keyframes):
    from nuscenes.eval.common.config import config_factory

    assert CLASS_RANGE == config_factory("detection_cvpr_2019").class_range and set(CLASS_RANGE) == TEN_CLASSES
    for seed in range(6):
        duration = (keyframes - 1) * 0.5
        layout = build_scene(np.random.default_rng([seed, keyframes]), duration)
        covered = class_coverage(layout, np.arange(keyframes) * 0.5)
        assert covered.all(), (seed, dict(zip(DETECTION_CLASSES, covered.mean(0))))


def test_every_scene_has_all_classes_with_lidar_points(dataset):
    """Per scene: each class has an annotation with >= 5 LiDAR points within its devkit range in at
    least half of the keyframes (what DetectionEval needs to score every class)."""
    _, _, nusc = dataset
    from nuscenes.eval.detection.utils import category_to_detection_name

    for scene in nusc.scene:
        samples = [s for s in nusc.sample if s["scene_token"] == scene["token"]]
        seen = np.zeros((len(samples), len(DETECTION_CLASSES)), dtype=bool)
        for k, sample in enumerate(samples):
            ego = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
            for token in sample["anns"]:
                ann = nusc.get("sample_annotation", token)
                name = category_to_detection_name(ann["category_name"])
                distance = np.hypot(*np.subtract(ann["translation"][:2], ego["translation"][:2]))
                if ann["num_lidar_pts"] >= 5 and distance < CLASS_RANGE[name]:
                    seen[k, DETECTION_CLASSES.index(name)] = True
        assert seen.mean(0).min() >= 0.5, (scene["name"], dict(zip(DETECTION_CLASSES, seen.mean(0))))


# ---------------------------------------------------------------- splits and bad input


def test_scene_selection_keeps_both_splits():
    from nuscenes.utils import splits

    mini = select_scenes("v1.0-mini")
    assert [n for n, s in mini if s == "train"] == splits.mini_train
    assert [n for n, s in mini if s == "val"] == splits.mini_val
    assert [s for _, s in select_scenes("v1.0-mini", 2)] == ["train", "val"]
    big = select_scenes("v1.0-trainval", 20)
    assert sum(s == "val" for _, s in big) == 4
    assert all(n in (splits.train if s == "train" else splits.val) for n, s in big)
    with pytest.raises(ValueError, match="num_scenes=11"):
        select_scenes("v1.0-mini", 11)


def test_unknown_version_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="v1.0-bogus"):
        generate_dataset(str(tmp_path), version="v1.0-bogus", progress=False)
    assert not any(tmp_path.iterdir())


def test_unwritable_root_fails_clearly(tmp_path):
    if os.geteuid() == 0:  # root ignores permissions: use a path below a regular file instead
        (tmp_path / "file.txt").write_text("x")
        root = tmp_path / "file.txt" / "sub"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        root = locked / "sub"
    with pytest.raises(DatasetWriteError, match=str(root)):
        generate_dataset(str(root), num_scenes=1, keyframes_per_scene=2, image_size=(32, 18), progress=False)
