"""Speed of the synthetic nuScenes generator: the whole default mini dataset, plus the cost of
one LiDAR sweep and one camera image.

    python benchmarks/synthetic_generation.py                 # default mini (10 scenes) in a temp dir
    python benchmarks/synthetic_generation.py --num-scenes 2  # quicker

Target: the default mini dataset in under 3 minutes on a 2-core machine. Prints wall-clock and
CPU seconds (this process and its workers): on a shared machine the CPU figure is the steadier one,
and the printed load average says how shared it was.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def micro(image_size, repeats: int = 20) -> dict:
    """Mean seconds per LiDAR sweep and per camera image of one scene (single process)."""
    from mmdet3d.datasets.synthetic.camera import render_camera
    from mmdet3d.datasets.synthetic.lidar import SpinningLidar
    from mmdet3d.datasets.synthetic.rig import CAMERA_CHANNELS, camera_intrinsic, sensor2ego
    from mmdet3d.datasets.synthetic.writer import build_world, ego_to_scene

    world = build_world(0, 0, 20)
    layout, lidar = world.layout, SpinningLidar()
    start, points = time.perf_counter(), 0
    for k in range(repeats):
        t = 0.05 * k
        pts, _ = lidar.cast(layout.boxes_at(t), world.ground, ego_to_scene(layout, t) @ sensor2ego("LIDAR_TOP"),
                            np.random.default_rng(k))
        points += len(pts)
    sweep = (time.perf_counter() - start) / repeats
    start, images = time.perf_counter(), 0
    for k in range(max(repeats // 6, 1)):
        t = 0.5 * k
        boxes = layout.boxes_at(t)
        for ch in CAMERA_CHANNELS:
            render_camera(boxes, world.ground, layout.sun, ego_to_scene(layout, t) @ sensor2ego(ch),
                          camera_intrinsic(ch, image_size), image_size, len(layout.labels))
            images += 1
    return dict(sweep_s=sweep, image_s=(time.perf_counter() - start) / images, points_per_sweep=points / repeats)


def main() -> None:
    from mmdet3d.datasets.synthetic import generate_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="output folder (default: a temporary folder, removed after)")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--num-scenes", type=int, default=None)
    parser.add_argument("--keyframes", type=int, default=20)
    parser.add_argument("--image-size", type=int, nargs=2, default=(640, 360), metavar=("W", "H"))
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-micro", action="store_true")
    args = parser.parse_args()
    image_size = tuple(args.image_size)

    if not args.skip_micro:
        m = micro(image_size)
        print(f"one LiDAR sweep: {m['sweep_s'] * 1e3:.1f} ms ({m['points_per_sweep']:.0f} points); "
              f"one {image_size[0]}x{image_size[1]} image: {m['image_s'] * 1e3:.1f} ms")
    root = args.root or tempfile.mkdtemp(prefix="synthetic_nuscenes_")
    try:
        cpu0, wall0, load0 = _cpu_seconds(), time.perf_counter(), os.getloadavg()
        summary = generate_dataset(root, version=args.version, num_scenes=args.num_scenes,
                                   keyframes_per_scene=args.keyframes, image_size=image_size, workers=args.workers)
        wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{summary['version']}: {summary['scenes']} scenes, {summary['samples']} samples, "
          f"{summary['images']} images, {summary['lidar_sweeps']} LiDAR sweeps "
          f"({summary['lidar_points']['mean']:.0f} points each), {summary['annotations']} annotations "
          f"({summary['annotations'] / summary['samples']:.1f} per sample)")
    print(f"generation: {wall:.1f} s wall, {cpu:.1f} s CPU (target: default mini under 180 s wall on 2 cores); "
          f"load average before/after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
