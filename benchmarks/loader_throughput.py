"""Training data-loader throughput on the embedded synthetic dataset.

Pipeline: the ``train_pipeline`` of ``configs/synthetic/default.yaml`` (6 cameras, LiDAR sweeps,
ImageAug3D, GlobalRotScaleTrans, RandomFlip3D, filters, ImageNormalize) with ``DepthTargets``
added before the format bundle, as the depth-supervised students use it. The dataset is
``NuScenesDataset`` on ``nuscenes_infos_train.pkl`` under ``--root``; if that is missing it is
generated first (``tools/create_data.py synthetic`` then ``nuscenes``).

For each worker count, a ``DataLoader`` (``collate``, batch ``--batch``) runs ``--warmup``
batches (worker start-up) and then ``--batches`` timed batches; the figure is timed samples per
second. ``--profile`` also times each pipeline step in this process. Target: >= 20 samples/s
with 2 workers at the synthetic image size. BLAS is limited to one thread per process (see
below); the load average printed before timing says how busy the machine was.

    python benchmarks/loader_throughput.py [--root data/synthetic] [--workers 0 2] [--batches 30]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

# One BLAS thread per process, set before numpy loads OpenBLAS: with 2 workers on 2 cores, extra
# BLAS threads only contend (override by exporting OPENBLAS_NUM_THREADS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mmdet3d.datasets.nuscenes_dataset import NuScenesDataset  # noqa: E402
from mmdet3d.datasets.pipelines import collate  # noqa: E402
from mmdet3d.utils import load_config  # noqa: E402


def ensure_dataset(root: str, scenes: int | None) -> None:
    if os.path.isfile(os.path.join(root, "nuscenes_infos_train.pkl")):
        return
    script = os.path.join(REPO, "tools", "create_data.py")
    generate = [sys.executable, script, "synthetic", "--root-path", root, "--version", "v1.0-mini"]
    if scenes is not None:
        generate += ["--scenes", str(scenes)]
    print(f"generating the synthetic dataset under {root} ...", flush=True)
    subprocess.run(generate, check=True)
    subprocess.run([sys.executable, script, "nuscenes", "--root-path", root, "--version", "v1.0-mini"], check=True)


def train_pipeline(cfg: dict, depth_stride: int) -> list[dict]:
    pipeline = [dict(step) for step in cfg["train_pipeline"]]
    if depth_stride > 0 and not any(step["type"] == "DepthTargets" for step in pipeline):
        at = next(i for i, step in enumerate(pipeline) if step["type"] == "DefaultFormatBundle3D")
        pipeline.insert(at, dict(type="DepthTargets", downsample=depth_stride))
        collect = pipeline[-1]
        collect["keys"] = list(collect["keys"]) + ["depth_map", "fg_map"]
    return pipeline


def measure(dataset, workers: int, batch_size: int, warmup: int, batches: int) -> tuple[float, float]:
    """-> (timed samples per second, CPU seconds per sample of this process and its workers).

    CPU time covers warm-up and timed batches; workers' time is counted once they have exited.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=False, drop_last=True)
    cpu_before = os.times()
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    samples = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:  # small dataset: start another pass
            iterator = iter(loader)
            batch = next(iterator)
        samples += batch["img"].shape[0]
    rate = samples / (time.perf_counter() - start)
    del iterator, batch  # shuts the workers down so that their CPU time is accounted
    cpu_after = os.times()
    cpu = sum(cpu_after[i] - cpu_before[i] for i in range(4))  # user, system, children user, children system
    return rate, cpu / (samples + warmup * batch_size)


def profile_steps(dataset, count: int) -> None:
    torch.set_num_threads(1)  # as in a DataLoader worker
    steps = dataset.pipeline.transforms
    times = np.zeros(len(steps))
    for i in range(count):
        results = dataset.get_data_info(i % len(dataset))
        for k, step in enumerate(steps):
            start = time.perf_counter()
            results = step(results)
            times[k] += time.perf_counter() - start
    print(f"per-step time, mean of {count} samples in one process:")
    for step, t in zip(steps, times / count):
        print(f"  {type(step).__name__:28s} {1000 * t:7.2f} ms")
    print(f"  {'total':28s} {1000 * times.sum() / count:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(REPO, "data", "synthetic"))
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "synthetic", "default.yaml"))
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--depth-stride", type=int, default=8, help="DepthTargets stride; 0 leaves it out")
    parser.add_argument("--scenes", type=int, default=None, help="scenes to generate if the dataset is missing")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also time each step over N samples")
    args = parser.parse_args()

    ensure_dataset(args.root, args.scenes)
    cfg = load_config(args.config)
    pipeline = train_pipeline(cfg, args.depth_stride)
    dataset = NuScenesDataset(args.root, "nuscenes_infos_train.pkl", pipeline=pipeline, object_classes=cfg["object_classes"])
    sample = dataset[0]
    print(f"dataset: {args.root}, {len(dataset)} training samples; image batch per sample {tuple(sample['img'].shape)}, "
          f"{len(sample['points'])} points; steps: {', '.join(type(s).__name__ for s in dataset.pipeline.transforms)}")
    if args.profile:
        profile_steps(dataset, args.profile)
    print(f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']} OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before timing")
    for workers in args.workers:
        rate, cpu = measure(dataset, workers, args.batch, args.warmup, args.batches)
        print(f"num_workers={workers} batch={args.batch}: {rate:.1f} samples/s over {args.batches} batches "
              f"(target >= 20 with 2 workers); {1000 * cpu:.0f} CPU ms per sample, i.e. at most "
              f"{2 / cpu:.1f} samples/s on 2 idle cores", flush=True)


if __name__ == "__main__":
    main()
