"""Forward latency and peak memory of the paper-scale models at batch 1 (CPU, and CUDA if present).

    python benchmarks/model_latency.py                      # both nuScenes configs, CPU (+ CUDA)
    python benchmarks/model_latency.py --configs configs/synthetic/det/centerhead/second/camera+lidar/convfuser.yaml \
        --batch-size 2 --train --input random               # a training step (forward + backward)

``--input keyframe`` (default) feeds the real nuScenes keyframe (``--keyframe``, default
../shared/data/nuscenes_keyframe) through the config's test pipeline, with its GT boxes;
``--input random`` (or a missing keyframe) a random batch of the config's image size with a
simple six-camera rig. Each measurement runs ``--warmup``
untimed iterations then reports the median and min/max of ``--repeats`` timed ones. Peak memory
is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak resident set size on CPU
(a high-water mark over the whole run, so measure one config per process for exact figures).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmdet3d.apis.benchmark import timed_call  # noqa: E402
from mmdet3d.apis.data import to_device  # noqa: E402
from mmdet3d.datasets.example_batches import keyframe_batch, make_batch  # noqa: E402
from mmdet3d.models import build_model  # noqa: E402
from mmdet3d.utils.config import load_config  # noqa: E402

KEYFRAME = ROOT.parent / "shared/data/nuscenes_keyframe"
DEFAULT_CONFIGS = [
    "configs/nuscenes/det/centerhead/lssfpn/camera+lidar/resnet50/convfuser.yaml",
    "configs/nuscenes/det/centerhead/lssfpn/camera/resnet50/lss.yaml",
]


def random_batch(cfg: dict, batch_size: int) -> dict:
    extent = cfg["point_cloud_range"][3]
    return make_batch(batch_size=batch_size, num_cams=6, image_size=tuple(cfg["image_size"]),
                      num_boxes=(20,), extent=extent * 0.9, num_points=30000)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(model, batch: dict, device: torch.device, train: bool, warmup: int, repeats: int) -> dict:
    def step():
        if train:
            losses = model(batch)
            sum(losses.values()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(batch)

    sync = device.type == "cuda"
    model.train(train)
    for _ in range(warmup):
        timed_call(step, sync)
    if sync:
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed_call(step, sync) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times),
            "peak_mib": peak}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--keyframe", type=Path, default=KEYFRAME)
    parser.add_argument("--input", choices=["keyframe", "random"], default="keyframe")
    parser.add_argument("--train", action="store_true", help="time a training step (forward + backward)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=str, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for path in args.configs:
        cfg = load_config(str(ROOT / path) if not os.path.isabs(path) else path)
        batch = keyframe_batch(cfg, args.keyframe, args.batch_size, test_mode=False) if args.input == "keyframe" else None
        source = "keyframe" if batch is not None else "random"
        if batch is None:
            batch = random_batch(cfg, args.batch_size)
        for name in args.devices:
            device = torch.device(name)
            torch.manual_seed(0)
            model = build_model(cfg["model"]).to(device)
            stats = measure(model, to_device(batch, device), device, args.train, args.warmup, args.repeats)
            row = {"config": path, "device": name, "mode": "train" if args.train else "eval", "batch_size": args.batch_size,
                   "input": source, "threads": torch.get_num_threads(),
                   "params_m": sum(p.numel() for p in model.parameters()) / 1e6, **stats}
            rows.append(row)
            print(f"{path} [{name}, {row['mode']}, B={args.batch_size}, {source}, {row['threads']} threads, "
                  f"{row['params_m']:.1f}M params]: median {stats['median_ms']:.0f} ms "
                  f"(min {stats['min_ms']:.0f}, max {stats['max_ms']:.0f}), peak {stats['peak_mib']:.0f} MiB", flush=True)
            del model
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
