"""``make demo``: run the project as far as it goes, printing what it made and how long it took.

Stages: generate the embedded nuScenes-format dataset, write the info files, load it back through
the nuScenes devkit, then train the camera+LiDAR teacher, the two camera-only baselines (without
and with depth supervision) and the TiG-distilled camera-only student with ``tools/train.py``, and
score each on the val split with the devkit (mAP, NDS, heading and velocity errors).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmdet3d.utils.data_files import load_trusted_pickle  # noqa: E402

STAMP = ".demo_stamp.json"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = "configs/synthetic/det/centerhead/second/camera+lidar/convfuser.yaml"
MODELS = {  # trained in this order; the TiG student reads the teacher's latest checkpoint
    "teacher (camera+LiDAR)": TEACHER,
    "camera-only, no depth sup.": "configs/synthetic/det/centerhead/second/camera/lss.yaml",
    "camera-only, depth sup.": "configs/synthetic/det/centerhead/second/camera/lss_depth.yaml",
    "TiG student (camera-only)": "configs/synthetic/distill/tig/convfuser.yaml",
}


def stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def generate(root: str, version: str, seed: int, force: bool) -> None:
    from mmdet3d.datasets.synthetic import GENERATOR_VERSION, generate_dataset

    stamp_path = os.path.join(root, STAMP)
    wanted = {"version": version, "seed": seed, "generator": GENERATOR_VERSION}
    if not force and os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == wanted:
                print(f"reusing the dataset in {root} (same version, seed and generator; pass --force to regenerate)")
                return
    start = time.time()
    summary = generate_dataset(root_path=root, version=version, seed=seed)
    seconds = time.time() - start
    with open(stamp_path, "w") as f:
        json.dump(wanted, f)
    print(json.dumps({k: v for k, v in summary.items() if k != "paths"}, indent=2, default=str))
    target = " (target: under 180 s for the default mini dataset)" if version == "v1.0-mini" else ""
    print(f"generated in {seconds:.1f} s{target}")


def summarise(root: str, version: str) -> None:
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=root, verbose=False)
    print(f"devkit: {len(nusc.scene)} scenes, {len(nusc.sample)} samples, {len(nusc.sample_data)} sample_data, "
          f"{len(nusc.sample_annotation)} annotations, {len(nusc.instance)} instances")
    for split in ("train", "val"):
        path = os.path.join(root, f"nuscenes_infos_{split}.pkl")
        infos = load_trusted_pickle(path)["infos"]
        names = Counter(n for info in infos for n in info["gt_names"])
        boxes = sum(len(info["gt_names"]) for info in infos)
        print(f"{split}: {len(infos)} samples, {boxes} boxes; per class: " + ", ".join(f"{k} {v}" for k, v in sorted(names.items())))


def last_val_metrics(run_dir: str) -> dict:
    metrics = {}
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("mode") == "val":
                metrics = record
    return metrics


def run_dir_of(config: str, run_root: str) -> str:
    return os.path.join(run_root, os.path.splitext(os.path.relpath(config, "configs"))[0])


def train_and_evaluate(name: str, config: str, root: str, epochs: int, run_root: str) -> dict:
    """``tools/train.py`` as a user runs it, evaluating on the val split after the last epoch."""
    run_dir = run_dir_of(config, run_root)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train.py"), config, "--run-dir", run_dir,
           "--dataset_root", root.rstrip("/") + "/", "--max_epochs", str(epochs), "--eval_interval", str(epochs)]
    if "/distill/" in config:
        cmd += ["--model.teacher_checkpoint", os.path.join(run_dir_of(TEACHER, run_root), "latest.pth")]
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    metrics = last_val_metrics(run_dir)
    return {"model": name, "run_dir": run_dir, "minutes": (time.time() - start) / 60,
            **{k: metrics.get(k, float("nan")) for k in ("mAP", "NDS", "mAOE", "mAVE")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root-path", default="data/synthetic")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate the dataset even if present")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per model (0: skip training)")
    parser.add_argument("--run-root", default="runs/demo")
    args = parser.parse_args()
    total = time.time()

    t = stage("1. embedded dataset: tools/create_data.py synthetic")
    generate(args.root_path, args.version, args.seed, args.force)
    print(f"stage time {time.time() - t:.1f} s")

    t = stage("2. info files: tools/create_data.py nuscenes")
    from mmdet3d.datasets.nuscenes_converter import create_infos

    summary = create_infos(args.root_path, args.version, None, 10, "nuscenes", True)
    print(json.dumps(summary, indent=2, default=str))
    print(f"stage time {time.time() - t:.1f} s")

    t = stage("3. summary through the nuScenes devkit")
    summarise(args.root_path, args.version)
    print(f"stage time {time.time() - t:.1f} s")

    if args.epochs > 0:
        rows = []
        for i, (name, config) in enumerate(MODELS.items(), start=4):
            t = stage(f"{i}. train the {name} for {args.epochs} epochs, evaluate on the val split")
            rows.append(train_and_evaluate(name, config, args.root_path, args.epochs, args.run_root))
            print(f"stage time {time.time() - t:.1f} s")
        print(f"\n{'model':<28}{'epochs':>7}{'train+eval min':>16}{'mAP':>8}{'NDS':>8}{'mAOE':>8}{'mAVE':>8}  run dir")
        for row in rows:
            print(f"{row['model']:<28}{args.epochs:>7}{row['minutes']:>16.1f}{row['mAP']:>8.4f}{row['NDS']:>8.4f}"
                  f"{row['mAOE']:>8.3f}{row['mAVE']:>8.3f}  {row['run_dir']}")

    print(f"\nmake demo: total run time {time.time() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
