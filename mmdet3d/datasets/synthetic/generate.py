"""Entry point: write a synthetic dataset in the nuScenes v1.0 on-disk format."""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
from tqdm import tqdm

from ..nuscenes_utils import TRAIN_VAL_SPLITS
from .rig import CAMERA_CHANNELS, LIDAR_CHANNEL
from .tables import static_tables
from .writer import SWEEP_PERIOD_US, SceneTask, generate_scene

__all__ = ["generate_dataset", "select_scenes", "SUPPORTED_VERSIONS", "DatasetWriteError", "GENERATOR_VERSION"]

# Bumped whenever the generated content changes, so that cached datasets are regenerated
# (2: front/back cues on every class with a heading).
GENERATOR_VERSION = 2
SUPPORTED_VERSIONS = ("v1.0-mini", "v1.0-trainval")
TABLE_NAMES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
               "sample_annotation", "sample_data", "scene", "sensor", "visibility")


class DatasetWriteError(OSError):
    """The dataset root cannot be created or written; the message names the path."""


def select_scenes(version: str, num_scenes: int | None = None) -> list[tuple[str, str]]:
    """(scene name, split) pairs from the devkit's split lists, about 80 % train and 20 % val.

    ``v1.0-mini`` draws from ``mini_train``/``mini_val``, ``v1.0-trainval`` from ``train``/``val``;
    ``num_scenes=None`` takes the whole lists. Both splits are kept whenever ``num_scenes >= 2``.
    """
    from nuscenes.utils import splits

    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unknown nuScenes version {version!r}; supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    train, val = (getattr(splits, split) for split in TRAIN_VAL_SPLITS[version])
    total = len(train) + len(val)
    if num_scenes is None:
        num_scenes = total
    if not isinstance(num_scenes, (int, np.integer)) or not 1 <= num_scenes <= total:
        raise ValueError(f"num_scenes={num_scenes!r} is out of range for {version}: expected 1..{total}")
    num_val = 0 if num_scenes == 1 else min(len(val), max(1, round(0.2 * num_scenes)))
    num_train = num_scenes - num_val
    if num_train > len(train):
        num_train, num_val = len(train), num_scenes - len(train)
    return [(n, "train") for n in train[:num_train]] + [(n, "val") for n in val[:num_val]]


GENERATED_FILE = re.compile(r"syn\d{3}-\d{4}(-\d\d){5}\+0000__[A-Z_]+__\d+\.(jpg|pcd\.bin)")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _remove_earlier_output(root: str, version: str) -> None:
    """Delete what an earlier run of this generator wrote under ``root`` for ``version``: its
    tables, the map masks its ``map`` table names, and the sensor files named like ours in
    ``samples/`` and ``sweeps/``. Anything else (other versions' tables, info files, user
    files) stays."""
    table_root = os.path.join(root, version)
    map_table = os.path.join(table_root, "map.json")
    if os.path.isfile(map_table):
        with open(map_table) as f:
            for record in json.load(f):
                name = os.path.basename(str(record.get("filename", "")))
                path = os.path.join(root, "maps", name)
                if re.fullmatch(r"[0-9a-f]{32}\.png", name) and os.path.isfile(path):
                    os.remove(path)
    for name in TABLE_NAMES:
        path = os.path.join(table_root, f"{name}.json")
        if os.path.isfile(path):
            os.remove(path)
    for folder in ("samples", "sweeps"):
        for channel in CAMERA_CHANNELS + (LIDAR_CHANNEL,):
            path = os.path.join(root, folder, channel)
            if os.path.isdir(path):
                for entry in os.scandir(path):
                    if entry.is_file() and GENERATED_FILE.fullmatch(entry.name):
                        os.remove(entry.path)


def _prepare_root(root: str, version: str) -> None:
    folders = [version, "maps", f"sweeps/{LIDAR_CHANNEL}"]
    folders += [f"samples/{ch}" for ch in CAMERA_CHANNELS + (LIDAR_CHANNEL,)]
    try:
        for folder in folders:
            os.makedirs(os.path.join(root, folder), exist_ok=True)
        _remove_earlier_output(root, version)
        probe = os.path.join(root, version, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise DatasetWriteError(f"cannot write the synthetic dataset under root_path={root!r}: {e}") from e


@contextlib.contextmanager
def _single_threaded_children():
    """Processes spawned inside inherit one-thread BLAS/OpenMP settings (read at their import)."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: "1" for k in THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_parallel(tasks: list[SceneTask], workers: int, on_done) -> list[dict]:
    """Scenes in ``workers`` spawned processes, results in task order. A worker's exception is
    raised here (the other scenes are cancelled); a worker that dies raises ``BrokenProcessPool``
    instead of hanging."""
    results: list[dict | None] = [None] * len(tasks)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        with _single_threaded_children():
            futures = {pool.submit(generate_scene, task): i for i, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                on_done()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


def generate_dataset(root_path: str, version: str = "v1.0-mini", num_scenes: int | None = None,
                     keyframes_per_scene: int = 20, image_size: tuple[int, int] = (640, 360), seed: int = 0,
                     progress: bool = True, workers: int | None = None) -> dict:
    """Write a synthetic nuScenes-format dataset under ``root_path``.

    Tables go to ``root_path/<version>/``, images to ``samples/CAM_*``, LiDAR keyframes to
    ``samples/LIDAR_TOP``, sweeps to ``sweeps/LIDAR_TOP`` and map masks to ``maps/``. Scene ``i``
    depends only on ``(seed, i)`` and the other arguments, so output bytes are reproducible.
    Every scene shows all ten detection classes with LiDAR points within the devkit's class
    ranges (see ``coverage.py``). ``workers`` spawned processes generate scenes in parallel
    (default: up to 2; ``workers=1`` runs in this process); the output does not depend on it.

    Re-generating into an existing root first deletes what an earlier run wrote for ``version``:
    the ``<version>/`` tables, the ``maps/`` masks listed in its ``map`` table and the files in
    ``samples/`` and ``sweeps/`` named like this generator's (``syn<seed>-<date>__<channel>__<us>``),
    so no stale scene survives. Other files under the root are left alone.

    Returns a summary: counts of scenes, samples, sample_data, annotations (total and per
    detection class), LiDAR points per sweep, the scene names per split, paths and seconds.
    """
    start = time.time()
    scenes = select_scenes(version, num_scenes)
    keyframes = int(keyframes_per_scene)
    if keyframes < 2:
        raise ValueError(f"keyframes_per_scene={keyframes_per_scene!r} must be at least 2 "
                         "(velocities need two keyframes)")
    width, height = (int(v) for v in image_size)
    if width < 16 or height < 16:
        raise ValueError(f"image_size={tuple(image_size)!r} is too small; expected (W, H) of at least 16 pixels")
    root = os.path.abspath(root_path)
    _prepare_root(root, version)
    tasks = [SceneTask(root, i, name, keyframes, (width, height), int(seed))
             for i, (name, _) in enumerate(scenes)]
    if workers is None:
        workers = min(2, os.cpu_count() or 1, len(tasks))
    bar = tqdm(total=len(tasks) * keyframes, desc="synthetic nuScenes samples", unit="sample",
               disable=not progress)
    try:
        if workers <= 1:
            results = [generate_scene(task, progress=lambda: bar.update(1)) for task in tasks]
        else:
            results = _run_parallel(tasks, workers, lambda: bar.update(keyframes))
    finally:
        bar.close()

    tables = static_tables()
    for result in results:
        for name, records in result["tables"].items():
            tables.setdefault(name, []).extend(records)
    table_root = os.path.join(root, version)
    for name in TABLE_NAMES:
        with open(os.path.join(table_root, f"{name}.json"), "w") as f:
            json.dump(tables[name], f, indent=1)

    per_class: dict[str, int] = {}
    for result in results:
        for k, v in result["stats"]["annotations"].items():
            per_class[k] = per_class.get(k, 0) + v
    points = np.array([n for r in results for n in r["stats"]["lidar_points"]])
    return dict(
        root=root,
        version=version,
        table_root=table_root,
        scenes=len(tables["scene"]),
        scene_names={split: [n for n, s in scenes if s == split] for split in ("train", "val")},
        samples=len(tables["sample"]),
        sample_data=len(tables["sample_data"]),
        images=sum(r["stats"]["images"] for r in results),
        lidar_sweeps=int(len(points)),
        lidar_points=dict(total=int(points.sum()), mean=float(points.mean()), min=int(points.min()),
                          max=int(points.max())),
        annotations=len(tables["sample_annotation"]),
        annotations_per_class=dict(sorted(per_class.items())),
        instances=len(tables["instance"]),
        sweep_period_us=SWEEP_PERIOD_US,
        seconds=round(time.time() - start, 2),
    )
