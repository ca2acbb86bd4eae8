"""Benchmark the lift-splat BEV pooling at paper scale: sparse map vs materialising reference.

Setting (BEVFusion nuScenes camera branch): 6 cameras, 256x704 images (nuScenes 1600x900 resized
by 0.48 and cropped), 32x88 features, C = 80, D = 118 bins (dbound [1, 60, 0.5]), into a 180x180
grid (xbound = ybound = [-54, 54, 0.6], zbound [-10, 10, 20]). The camera rig (intrinsics,
extrinsics) is read at runtime from the real keyframe in ``shared/data/nuscenes_keyframe``.

Time: ``--repeat`` interleaved rounds in this process (each case once per round, after a
warm-up); the table gives min and median, ratios use the min (least disturbed by other load). Peak memory: each measurement runs
once in a fresh subprocess (glibc mmap threshold fixed at 64 KiB so that freed tensors leave
resident memory); the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``
"5") just before the measured call, and the figure is ``VmHWM after - VmRSS before``.

    python benchmarks/lift_splat.py [--batch 1] [--repeat 5] [--threads N] [--device cpu]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmdet3d.apis.benchmark import timed_call  # noqa: E402
from mmdet3d.models.vtransforms import LSSTransform  # noqa: E402
from mmdet3d.ops.bev_pool import BEVPoolGeometry, bev_pool_reference  # noqa: E402
from mmdet3d.utils.data_files import load_trusted_pickle  # noqa: E402

# shared/data beside the checkout, as the tests read it
KEYFRAME_DIR = os.environ.get(
    "NUSCENES_KEYFRAME", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "nuscenes_keyframe"))
GRID = dict(xbound=[-54.0, 54.0, 0.6], ybound=[-54.0, 54.0, 0.6], zbound=[-10.0, 10.0, 20.0])
DBOUND = [1.0, 60.0, 0.5]
IMAGE, FEATURE, CHANNELS = (256, 704), (32, 88), 80


def camera_rig(batch_size: int, device: str) -> dict:
    """Batch matrices for the keyframe's six cameras with an ImageAug-like resize 0.48 + crop."""
    path = sorted(glob.glob(os.path.join(KEYFRAME_DIR, "*.pkl")))[0]
    info = load_trusted_pickle(path)["data_list"][0]
    intrinsics, camera2lidar = [], []
    for cam in info["images"].values():
        k = np.eye(4)
        k[:3, :3] = np.asarray(cam["cam2img"])
        intrinsics.append(k)
        camera2lidar.append(np.linalg.inv(np.asarray(cam["lidar2cam"])))
    resize, crop = 0.48, (32.0, 176.0)  # 1600x900 -> 768x432 -> crop (w0, h0) to 704x256
    aug = np.eye(4)
    aug[0, 0] = aug[1, 1] = resize
    aug[0, 3], aug[1, 3] = -crop[0], -crop[1]
    num_cams = len(intrinsics)

    def stack(mats):
        t = torch.as_tensor(np.stack(mats), dtype=torch.float32, device=device)
        return t.unsqueeze(0).expand(batch_size, num_cams, 4, 4).contiguous()

    return {
        "camera_intrinsics": stack(intrinsics),
        "camera2lidar": stack(camera2lidar),
        "img_aug_matrix": stack([aug] * num_cams),
        "lidar_aug_matrix": torch.eye(4, device=device).expand(batch_size, 4, 4).contiguous(),
    }


def make_inputs(batch_size: int, device: str, seed: int = 0):
    vt = LSSTransform(in_channels=CHANNELS, out_channels=CHANNELS, image_size=IMAGE, feature_size=FEATURE,
                      dbound=DBOUND, **GRID).to(device)
    rig = camera_rig(batch_size, device)
    with torch.no_grad():
        geometry = vt.get_geometry(rig["camera2lidar"], rig["camera_intrinsics"], rig["img_aug_matrix"], rig["lidar_aug_matrix"])
    gen = torch.Generator().manual_seed(seed)
    b, n, d, h, w, _ = geometry.shape
    probs = torch.randn(b, n, d, h, w, generator=gen).softmax(dim=2).to(device)
    feats = torch.randn(b, n, CHANNELS, h, w, generator=gen).to(device)
    grad = torch.randn(b, CHANNELS, 180, 180, generator=gen).to(device)
    return geometry, probs, feats, grad


def step_fn(name: str, geometry, probs, feats, grad):
    """A closure running one measured step; ``cached`` structures are built outside it."""
    cached = BEVPoolGeometry(geometry, **GRID) if "cached" in name else None

    def forward(p, f):
        if name.startswith("reference"):
            return bev_pool_reference(p, f, geometry, **GRID)
        structure = cached if cached is not None else BEVPoolGeometry(geometry, **GRID)
        return structure.pool(p, f)

    if name == "build":
        return lambda: BEVPoolGeometry(geometry, **GRID)
    if name.endswith("fwd"):
        def run():
            with torch.no_grad():
                return forward(probs, feats)
        return run

    def run_train():
        p = probs.clone().requires_grad_(True)
        f = feats.clone().requires_grad_(True)
        torch.autograd.backward(forward(p, f), grad)
        return p.grad, f.grad
    return run_train


CASES = ["reference fwd", "sparse cached fwd", "sparse rebuilt fwd",
         "reference fwd+bwd", "sparse cached fwd+bwd", "sparse rebuilt fwd+bwd", "build"]


def _proc_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def measure_memory_child(name: str, batch_size: int, device: str) -> None:
    inputs = make_inputs(batch_size, device)
    run = step_fn(name, *inputs)
    before = _proc_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    out = run()
    del out
    print(json.dumps({"peak_mb": (_proc_kb("VmHWM") - before) / 1024}))


def peak_memory_mb(name: str, batch_size: int, device: str) -> float:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, "--batch", str(batch_size), "--device", device,
           "--threads", str(torch.get_num_threads())]
    # fixed mmap threshold: every large tensor is mapped on allocation and unmapped on free, so
    # resident memory follows the live tensors instead of glibc's reused heap
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def time_cases(runs: dict, repeat: int, device: str) -> dict:
    """Interleaved rounds (every case once per round) so that load from other processes spreads
    over all cases; returns per case (min, median) seconds."""
    sync = device.startswith("cuda")
    for run in runs.values():
        run()  # warm-up
    times = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            times[name].append(timed_call(run, sync))
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def check_equal(geometry, probs, feats, grad) -> dict:
    """Max abs differences of values and gradients (sparse vs reference), in float64."""
    g64, p64, f64, d64 = (t.double() for t in (geometry, probs, feats, grad))
    results = {}
    for name, fn in [("reference", lambda p, f: bev_pool_reference(p, f, g64, **GRID)),
                     ("sparse", lambda p, f: BEVPoolGeometry(g64, **GRID).pool(p, f))]:
        p, f = p64.clone().requires_grad_(True), f64.clone().requires_grad_(True)
        out = fn(p, f)
        torch.autograd.backward(out, d64)
        results[name] = (out.detach(), p.grad, f.grad)
    ref, fast = results["reference"], results["sparse"]
    return {key: float((a - b).abs().max() / a.abs().max()) for key, a, b in zip(["out", "d_probs", "d_feats"], ref, fast)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess peak-memory runs")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        measure_memory_child(args.memory_child, args.batch, args.device)
        return

    geometry, probs, feats, grad = make_inputs(args.batch, args.device)
    structure = BEVPoolGeometry(geometry, **GRID)
    kept = structure.point_index.numel()
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"frustum points {probs.numel():,}, inside the grid {kept:,}, (cell, pixel) pairs {structure.num_pairs:,}")
    errors = check_equal(geometry, probs, feats, grad)
    print("max |sparse - reference| / max |reference| (float64): " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))

    timings = time_cases({name: step_fn(name, geometry, probs, feats, grad) for name in CASES}, args.repeat, args.device)
    rows = {}
    for name in CASES:
        mem = float("nan")
        if not args.no_memory and args.device == "cpu":
            mem = peak_memory_mb(name, args.batch, args.device)
        rows[name] = (timings[name][0], mem, timings[name][1])

    print(f"\n{'case':<24}{'min ms':>10}{'median ms':>11}{'peak MB':>10}{'speed-up':>10}{'mem ratio':>10}")
    for name, (seconds, mem, median) in rows.items():
        ref_name = "reference fwd+bwd" if "bwd" in name else "reference fwd"
        ref_s, ref_m, _ = rows[ref_name]
        print(f"{name:<24}{seconds * 1e3:>10.1f}{median * 1e3:>11.1f}{mem:>10.1f}{ref_s / seconds:>9.1f}x{ref_m / mem:>9.1f}x")
    print("speed-up and targets use the min over the interleaved rounds")
    targets = [("fwd, cached (inference)", "sparse cached fwd", "reference fwd", 10.0, "time"),
               ("fwd, rebuilt (training)", "sparse rebuilt fwd", "reference fwd", 3.0, "time"),
               ("fwd+bwd, rebuilt (training)", "sparse rebuilt fwd+bwd", "reference fwd+bwd", 2.0, "time"),
               ("peak memory, training step", "sparse rebuilt fwd+bwd", "reference fwd+bwd", 5.0, "mem")]
    print("\ntargets")
    for label, fast, ref, target, kind in targets:
        index = 0 if kind == "time" else 1
        ratio = rows[ref][index] / rows[fast][index]
        print(f"  {label:<30} {ratio:6.1f}x  (target >= {target:.0f}x: {'met' if ratio >= target else 'MISSED'})")


if __name__ == "__main__":
    main()
