"""One synthetic scene: simulate, render, ray cast and write its files and table records.

A scene is one log: the ego drives for ``(keyframes - 1) * 0.5`` s; LiDAR sweeps every 0.05 s
(keyframes every tenth under ``samples/``, the others under ``sweeps/``), the six cameras at the
keyframes' LiDAR timestamps. Annotations are objects within ``ANNOTATION_RANGE`` of the ego that
have LiDAR points or visible pixels; ``num_lidar_pts`` is counted from the written sweep through
the written calibration and ego pose, as any reader of the tables would. ``build_world`` checks
with the keyframe sweeps that every detection class is seen within its devkit range.
"""
from __future__ import annotations

import datetime
import functools
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mmdet3d.core.bbox import count_points_in_boxes

from .camera import render_camera
from .coverage import class_coverage
from .ground import GroundTexture, build_ground, drivable_mask_png
from .lidar import SpinningLidar
from .rig import (CALIBRATION, CAMERA_CHANNELS, LIDAR_CHANNEL, camera_intrinsic, pose_matrix, quaternion_to_yaw,
                  sensor2ego, yaw_to_quaternion)
from .scene import SceneLayout, build_scene
from .tables import ATTRIBUTES, make_token, visibility_token

__all__ = ["SceneTask", "SceneWorld", "build_world", "ego_to_scene", "generate_scene", "SWEEP_PERIOD_US",
           "SWEEPS_PER_KEYFRAME", "ANNOTATION_RANGE", "MIN_COVERED"]

SWEEP_PERIOD_US = 50_000  # 20 Hz LiDAR
SWEEPS_PER_KEYFRAME = 10  # 2 Hz keyframes
ANNOTATION_RANGE = 60.0
MIN_COVERED = 0.5  # fraction of keyframes in which every class must be seen (see build_world)
MAX_ATTEMPTS = 8
START_US = 1_704_067_200_000_000  # 2024-01-01 00:00 UTC
LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")


@dataclass
class SceneTask:
    root: str
    index: int
    name: str
    keyframes: int
    image_size: tuple[int, int]
    seed: int
    jpeg_quality: int = 90


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _scene_to_global(rng, x_range) -> np.ndarray:
    """(3, 3) planar transform scene -> global: random heading, street inside x, y > 50 m."""
    theta = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    corners = np.array([[x, y, 1.0] for x in x_range for y in (-60.0, 60.0)]) @ m.T
    m[:2, 2] = 50.0 - corners[:, :2].min(0) + rng.uniform(0, 200, size=2)
    return m


@dataclass
class SceneWorld:
    """Everything random about one scene, rebuilt identically from ``(seed, index, keyframes)``."""

    layout: SceneLayout
    ground: GroundTexture
    scene2global: np.ndarray  # (3, 3) planar homogeneous transform
    t0: int  # timestamp of the first keyframe (us)
    logfile: str
    location: str
    keyframe_scans: list  # per keyframe: LiDAR ``(points, owner)`` as ``SpinningLidar.cast`` returns
    coverage: np.ndarray  # (keyframes, 10) bool, ``coverage.class_coverage`` of the keyframe scans

    @property
    def theta(self) -> float:
        """Heading of the scene frame in the global frame."""
        return float(np.arctan2(self.scene2global[1, 0], self.scene2global[0, 0]))


def _num_sweeps(keyframes: int) -> int:
    """LiDAR sweeps of a scene, from the first keyframe's to the last's."""
    return (keyframes - 1) * SWEEPS_PER_KEYFRAME + 1


def _sweep_time(k: int) -> float:
    return k * SWEEP_PERIOD_US * 1e-6


def _sweep_rng(seed: int, index: int, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, 1, k])


def build_world(seed: int, index: int, keyframes: int) -> SceneWorld:
    """The layout, ground and placement of scene ``index``; ``generate_scene`` renders this.

    The layout is drawn again (from a derived seed) until every detection class carries
    ``MIN_POINTS`` LiDAR points within its devkit class range in at least ``MIN_COVERED`` of the
    keyframes; after ``MAX_ATTEMPTS`` draws the best one is kept. The anchors of ``scene.py``
    make a redraw rare.
    """
    best = None
    for attempt in range(MAX_ATTEMPTS):
        world = _draw_world(seed, index, keyframes, attempt)
        score = world.coverage.mean(0).min()
        if score >= MIN_COVERED:
            return world
        if best is None or score > best[0]:
            best = (score, world)
    return best[1]


def _draw_world(seed: int, index: int, keyframes: int, attempt: int) -> SceneWorld:
    rng = np.random.default_rng([seed, index] if attempt == 0 else [seed, index, 2, attempt])
    duration = _sweep_time(_num_sweeps(keyframes) - 1)
    layout = build_scene(rng, duration)
    ground = build_ground(rng, layout.x_range, layout.sun)
    s2g = _scene_to_global(rng, layout.x_range)
    t0 = START_US + index * 3_600_000_000
    stamp = datetime.datetime.fromtimestamp(t0 * 1e-6, datetime.timezone.utc).strftime("%Y-%m-%d-%H-%M-%S")
    lidar, times, scans, counts = SpinningLidar(), [], [], []
    for k in range(0, _num_sweeps(keyframes), SWEEPS_PER_KEYFRAME):
        t = _sweep_time(k)
        points, owner = lidar.cast(layout.boxes_at(t), ground, ego_to_scene(layout, t) @ sensor2ego(LIDAR_CHANNEL),
                                   _sweep_rng(seed, index, k))
        times.append(t)
        scans.append((points, owner))
        counts.append(np.bincount(owner[owner >= 0], minlength=len(layout.labels)))
    return SceneWorld(layout=layout, ground=ground, scene2global=s2g, t0=t0,
                      logfile=f"syn{seed % 1000:03d}-{stamp}+0000",
                      location=LOCATIONS[int(rng.integers(len(LOCATIONS)))], keyframe_scans=scans,
                      coverage=class_coverage(layout, times, counts))


def ego_to_scene(layout: SceneLayout, t: float) -> np.ndarray:
    """(4, 4) ego pose in the scene frame at time ``t`` (s)."""
    ex, ey, eyaw = layout.ego_pose(t)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(eyaw), -np.sin(eyaw)], [np.sin(eyaw), np.cos(eyaw)]]
    m[:2, 3] = ex, ey
    return m


def generate_scene(task: SceneTask, progress=None) -> dict:
    """Generate scene ``task.index`` and return its table records and statistics.

    ``progress``: optional callable invoked once per keyframe written.
    """
    seed, name, (width, height) = task.seed, task.name, task.image_size
    world = build_world(seed, task.index, task.keyframes)
    layout, ground, s2g, theta, t0, logfile, location = (
        world.layout, world.ground, world.scene2global, world.theta, world.t0, world.logfile, world.location)
    tok = functools.partial(make_token, seed, name)

    log_token, map_token = tok("log"), tok("map")
    map_file = f"maps/{map_token}.png"
    cv2.imwrite(os.path.join(task.root, map_file), drivable_mask_png(s2g, layout.x_range))
    tables: dict[str, list[dict]] = {k: [] for k in ("log", "map", "scene", "sample", "sample_data", "ego_pose",
                                                     "calibrated_sensor", "instance", "sample_annotation")}
    tables["log"].append(dict(token=log_token, logfile=logfile, vehicle="syn-ego", date_captured=logfile[7:17],
                              location=location))
    tables["map"].append(dict(token=map_token, category="semantic_prior", filename=map_file, log_tokens=[log_token]))
    intrinsics = {ch: camera_intrinsic(ch, task.image_size) for ch in CAMERA_CHANNELS}
    calib = {}
    for ch in CAMERA_CHANNELS + (LIDAR_CHANNEL,):
        cal = CALIBRATION[ch]
        intrinsic = intrinsics[ch].tolist() if ch != LIDAR_CHANNEL else []
        calib[ch] = tok("calibrated_sensor", ch)
        tables["calibrated_sensor"].append(dict(
            token=calib[ch], sensor_token=make_token("sensor", ch), translation=list(cal["translation"]),
            rotation=list(cal["rotation"]), camera_intrinsic=intrinsic))
    lidar2ego = sensor2ego(LIDAR_CHANNEL)
    lidar = SpinningLidar()
    num_objects = len(layout.labels)
    attribute_token = {n: make_token("attribute", n) for n in ATTRIBUTES}
    last_sd = {}
    tracks: dict[int, list[tuple[int, dict]]] = {}
    stats = dict(lidar_points=[], images=0, annotations={})

    def add_sample_data(token, sample_token, channel, ts, filename, key, pose):
        tables["ego_pose"].append(dict(token=token, timestamp=ts, rotation=pose[0], translation=pose[1]))
        rec = dict(token=token, sample_token=sample_token, ego_pose_token=token, calibrated_sensor_token=calib[channel],
                   timestamp=ts, fileformat="pcd" if channel == LIDAR_CHANNEL else "jpg", is_key_frame=key,
                   height=0 if channel == LIDAR_CHANNEL else height, width=0 if channel == LIDAR_CHANNEL else width,
                   filename=filename, prev="", next="")
        if channel in last_sd:
            rec["prev"] = last_sd[channel]["token"]
            last_sd[channel]["next"] = token
        last_sd[channel] = rec
        tables["sample_data"].append(rec)

    sample_tokens = [tok("sample", i) for i in range(task.keyframes)]
    for k in range(_num_sweeps(task.keyframes)):
        t = _sweep_time(k)
        ts = t0 + k * SWEEP_PERIOD_US
        key, sample_index = k % SWEEPS_PER_KEYFRAME == 0, int(np.floor(k / SWEEPS_PER_KEYFRAME + 0.5))
        ex, ey, eyaw = layout.ego_pose(t)
        ego2scene = ego_to_scene(layout, t)
        gx, gy, _ = s2g @ [ex, ey, 1.0]
        pose = (yaw_to_quaternion(theta + eyaw), [float(gx), float(gy), 0.0])
        boxes = layout.boxes_at(t)
        if key:
            points = world.keyframe_scans[sample_index][0]
        else:
            points, _ = lidar.cast(boxes, ground, ego2scene @ lidar2ego, _sweep_rng(seed, task.index, k))
        stats["lidar_points"].append(len(points))
        folder = "samples" if key else "sweeps"
        lidar_file = f"{folder}/{LIDAR_CHANNEL}/{logfile}__{LIDAR_CHANNEL}__{ts}.pcd.bin"
        _write(os.path.join(task.root, lidar_file), points.tobytes())
        lidar_sd = tok("sample_data", LIDAR_CHANNEL, k)
        add_sample_data(lidar_sd, sample_tokens[sample_index], LIDAR_CHANNEL, ts, lidar_file, key, pose)
        if not key:
            continue
        i = sample_index
        tables["sample"].append(dict(token=sample_tokens[i], timestamp=ts, scene_token=tok("scene"),
                                     prev=sample_tokens[i - 1] if i > 0 else "",
                                     next=sample_tokens[i + 1] if i + 1 < task.keyframes else ""))
        visible = np.zeros(num_objects, dtype=np.int64)
        unoccluded = np.zeros(num_objects, dtype=np.int64)
        for ch in CAMERA_CHANNELS:
            rgb, _, _, vis, unocc = render_camera(boxes, ground, layout.sun, ego2scene @ sensor2ego(ch),
                                                  intrinsics[ch], task.image_size, num_objects)
            visible += vis
            unoccluded += unocc
            ok, jpg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, task.jpeg_quality])
            cam_file = f"samples/{ch}/{logfile}__{ch}__{ts}.jpg"
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {cam_file} ({task.image_size[0]}x{task.image_size[1]})")
            _write(os.path.join(task.root, cam_file), jpg.tobytes())
            add_sample_data(tok("sample_data", ch, k), sample_tokens[i], ch, ts, cam_file, True, pose)
            stats["images"] += 1
        _annotate(layout, s2g, theta, t, (ex, ey), points, lidar2ego, pose, visible, unoccluded,
                  sample_tokens[i], i, tracks, attribute_token, tok)
        if progress is not None:
            progress()

    _link_instances(tracks, layout, tables, stats, tok)
    tables["scene"].append(dict(token=tok("scene"), log_token=log_token, nbr_samples=task.keyframes,
                                first_sample_token=sample_tokens[0], last_sample_token=sample_tokens[-1], name=name,
                                description=f"Synthetic street, {location}, ego at {layout.ego.speed[0]:.1f} m/s"))
    return dict(tables=tables, stats=stats)


def _link_instances(tracks, layout, tables, stats, tok) -> None:
    """Chain each object's annotations over consecutive keyframes into instances (prev/next).

    An object that leaves the annotated set and comes back starts a new instance, so velocities
    from ``prev``/``next`` always span one keyframe interval.
    """
    for obj, anns in sorted(tracks.items()):
        runs, start = [], 0
        for j in range(1, len(anns) + 1):
            if j == len(anns) or anns[j][0] != anns[j - 1][0] + 1:
                runs.append(anns[start:j])
                start = j
        for run in runs:
            inst = tok("instance", obj, run[0][0])
            records = [rec for _, rec in run]
            for a, rec in enumerate(records):
                rec["instance_token"] = inst
                rec["prev"] = records[a - 1]["token"] if a > 0 else ""
                rec["next"] = records[a + 1]["token"] if a + 1 < len(records) else ""
            tables["sample_annotation"].extend(records)
            det = layout.labels[obj]  # the detection class the devkit maps the category to
            stats["annotations"][det] = stats["annotations"].get(det, 0) + len(records)
            tables["instance"].append(dict(token=inst, category_token=make_token("category", layout.categories[obj]),
                                           nbr_annotations=len(records), first_annotation_token=records[0]["token"],
                                           last_annotation_token=records[-1]["token"]))


def _annotate(layout, s2g, theta, t, ego_xy, points, lidar2ego, pose, visible, unoccluded, sample_token, sample_index,
              tracks, attribute_token, tok):
    """Annotation records of the objects near the ego at keyframe time ``t`` (linked later)."""
    x, y, yaw, _, _ = layout.motion.state(t)
    near = np.flatnonzero(np.hypot(x - ego_xy[0], y - ego_xy[1]) <= ANNOTATION_RANGE)
    if len(near) == 0:
        return
    sizes = layout.sizes[near]
    centers = np.column_stack([x[near], y[near], np.ones(len(near))]) @ s2g.T
    rotations = [yaw_to_quaternion(theta + float(a)) for a in yaw[near]]
    translations = [[float(cx), float(cy), float(h / 2)] for (cx, cy, _), h in zip(centers, sizes[:, 2])]
    # Count as a reader of the tables would: the written float32 points, calibration and pose.
    lidar2global = pose_matrix(*pose) @ lidar2ego
    pts = points[:, :3].astype(np.float64) @ lidar2global[:3, :3].T + lidar2global[:3, 3]
    boxes = np.array([tr + [s[0], s[1], s[2], quaternion_to_yaw(q)]
                      for tr, s, q in zip(translations, sizes, rotations)])
    counts = _count_points(pts, boxes)
    for j, obj in enumerate(near):
        fraction = visible[obj] / unoccluded[obj] if unoccluded[obj] > 0 else 0.0
        if counts[j] == 0 and visible[obj] == 0:
            continue
        attr = layout.attributes[obj]
        rec = dict(token=tok("sample_annotation", obj, sample_index), sample_token=sample_token, instance_token="",
                   visibility_token=visibility_token(float(fraction)),
                   attribute_tokens=[attribute_token[attr]] if attr else [], translation=translations[j],
                   size=[float(sizes[j, 1]), float(sizes[j, 0]), float(sizes[j, 2])], rotation=rotations[j],
                   prev="", next="", num_lidar_pts=int(counts[j]), num_radar_pts=0)
        tracks.setdefault(int(obj), []).append((sample_index, rec))


def _count_points(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) points of ``points`` (P, 3) inside each of ``boxes`` (N, 7), as ``count_points_in_boxes``
    counts them, testing each box only against the points of its x slab (bounding-circle radius)."""
    order = np.argsort(points[:, 0], kind="stable")
    xs = points[order, 0]
    radius = np.hypot(boxes[:, 3], boxes[:, 4]) / 2 + 1e-6
    lo = np.searchsorted(xs, boxes[:, 0] - radius, side="left")
    hi = np.searchsorted(xs, boxes[:, 0] + radius, side="right")
    counts = np.zeros(len(boxes), dtype=np.int64)
    for j in np.flatnonzero(hi > lo):
        candidates = torch.from_numpy(points[order[lo[j]:hi[j]]])
        counts[j] = int(count_points_in_boxes(candidates, torch.from_numpy(boxes[j:j + 1]))[0])
    return counts
