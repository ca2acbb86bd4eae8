"""``make demo``: the whole project on the embedded dataset, with no GPU and no download.

    python tools/demo.py [--root-path data/synthetic] [--np 2] [--epochs 6] [--run-root runs/demo]

1. generates the embedded nuScenes-format dataset and its info files (reused when complete);
2. trains the camera+LiDAR teacher, the depth-supervised camera-only baseline and the
   TiG-distilled camera-only student with ``tools/train.py``, under ``torchpack dist-run -np N``
   when OpenMPI and torchpack are present (plain python otherwise, said so);
3. evaluates each with ``tools/test.py`` through the nuScenes devkit and prints one table (mAP,
   NDS, the five TP errors) with the student's gain over the baseline;
4. renders val samples with ``tools/visualize.py`` and prints the path of ``index.html``.

Every stage reuses finished outputs, so a second run (or one after an interruption) resumes: a
finished training is skipped, an interrupted one continues from its latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmdet3d.utils.data_files import load_trusted_pickle  # noqa: E402

STAMP = ".demo_stamp.json"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = "configs/synthetic/det/centerhead/second/camera+lidar/convfuser.yaml"
BASELINE = "configs/synthetic/det/centerhead/second/camera/lss_depth.yaml"
STUDENT = "configs/synthetic/distill/tig/convfuser.yaml"
MODELS = {  # trained in this order; the student reads the teacher's checkpoint
    "teacher (camera+LiDAR)": TEACHER,
    "baseline (camera, depth sup.)": BASELINE,
    "TiG student (camera only)": STUDENT,
}
TOTAL_BATCH = 2  # samples per optimiser step in the synthetic configs (one process)
METRICS = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")


def stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def launcher(np_: int) -> list[str]:
    """The command prefix that runs a tool on ``np_`` processes (plain python for one)."""
    torchpack = os.path.join(os.path.dirname(sys.executable), "torchpack")
    if np_ > 1 and shutil.which("mpirun") and os.path.exists(torchpack):
        return [torchpack, "dist-run", "-np", str(np_), sys.executable]
    if np_ > 1:
        print(f"note: {'mpirun (OpenMPI 4)' if not shutil.which('mpirun') else 'torchpack'} not found: "
              "running on one process with plain python (apt-get install -y openmpi-bin for dist-run)")
    return [sys.executable]


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd), flush=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    subprocess.run(cmd, check=True, cwd=REPO, env=env)


# ----------------------------------------------------------------------------------- data
def prepare_data(root: str, version: str, seed: int, scenes: int | None, keyframes: int, force: bool) -> None:
    from mmdet3d.datasets.nuscenes_converter import create_infos
    from mmdet3d.datasets.synthetic import GENERATOR_VERSION, generate_dataset

    stamp_path = os.path.join(root, STAMP)
    wanted = {"version": version, "seed": seed, "generator": GENERATOR_VERSION, "scenes": scenes, "keyframes": keyframes}
    infos = [os.path.join(root, f"nuscenes_infos_{split}.pkl") for split in ("train", "val")]
    if not force and os.path.exists(stamp_path) and all(map(os.path.isfile, infos)):
        with open(stamp_path) as f:
            if json.load(f) == wanted:
                print(f"reusing the dataset and info files in {root} (same version, seed and generator; --force regenerates)")
                return
    if os.path.exists(stamp_path):
        os.remove(stamp_path)  # an interrupted regeneration must not look complete
    start = time.time()
    summary = generate_dataset(root_path=root, version=version, num_scenes=scenes, keyframes_per_scene=keyframes, seed=seed)
    print(f"generated {summary['samples']} samples of {summary['scenes']} scenes, {summary['images']} images, "
          f"{summary['lidar_sweeps']} LiDAR sweeps in {time.time() - start:.1f} s"
          + (" (target: under 180 s)" if version == "v1.0-mini" and scenes is None else ""))
    create_infos(root, version, None, 10, "nuscenes", True)
    for split, path in zip(("train", "val"), infos):
        data = load_trusted_pickle(path)["infos"]
        names = Counter(n for info in data for n in info["gt_names"])
        print(f"{split}: {len(data)} samples, {sum(names.values())} boxes ({', '.join(f'{k} {v}' for k, v in sorted(names.items()))})")
    with open(stamp_path, "w") as f:
        json.dump(wanted, f)


# ----------------------------------------------------------------------------------- models
def run_dir_of(config: str, run_root: str) -> str:
    return os.path.join(run_root, os.path.splitext(os.path.relpath(config, "configs"))[0])


def train(config: str, args, prefix: list[str]) -> str:
    """Train unless the run dir holds the final epoch's checkpoint; resume an interrupted run."""
    run_dir = run_dir_of(config, args.run_root)
    final = os.path.join(run_dir, f"epoch_{args.epochs}.pth")
    if os.path.isfile(final):
        print(f"reusing {final}")
        return final
    cmd = [*prefix, os.path.join(REPO, "tools", "train.py"), config, "--run-dir", run_dir,
           "--dataset_root", args.root_path.rstrip("/") + "/", "--max_epochs", str(args.epochs), "--eval_interval", "0"]
    if args.iters_per_epoch:
        cmd += ["--iters-per-epoch", str(args.iters_per_epoch)]
    if args.np > 1 and len(prefix) > 1:  # the same total batch (the configs' 2) on any number of processes
        cmd += ["--data.samples_per_gpu", str(max(1, TOTAL_BATCH // args.np))]
    if config == STUDENT:
        cmd += ["--model.teacher_checkpoint", os.path.join(run_dir_of(TEACHER, args.run_root), f"epoch_{args.epochs}.pth")]
    if os.path.isfile(os.path.join(run_dir, "latest.pth")):
        cmd.append("--resume")
    run(cmd)
    return final


def evaluate(config: str, checkpoint: str, args, prefix: list[str]) -> dict:
    """``tools/test.py`` on the val split; reused when newer than the checkpoint."""
    out = os.path.join(os.path.dirname(checkpoint), "demo_eval")
    metrics_path = os.path.join(out, "metrics.json")
    if not (os.path.isfile(metrics_path) and os.path.getmtime(metrics_path) > os.path.getmtime(checkpoint)):
        run([*prefix, os.path.join(REPO, "tools", "test.py"), config, checkpoint, "--eval", "bbox", "--split", "val",
             "--run-dir", out, "--dataset_root", args.root_path.rstrip("/") + "/"])
    else:
        print(f"reusing {metrics_path}")
    with open(metrics_path) as f:
        return json.load(f)


def render(checkpoint: str, teacher_checkpoint: str, args, prefix: list[str]) -> str:
    out = os.path.join(args.run_root, "viz")
    index = os.path.join(out, "index.html")
    if os.path.isfile(index) and os.path.getmtime(index) > os.path.getmtime(checkpoint):
        print(f"reusing {index}")
        return index
    run([*prefix, os.path.join(REPO, "tools", "visualize.py"), STUDENT, "--checkpoint", checkpoint, "--mode", "both",
         "--split", "val", "--samples", str(args.viz_samples), "--out-dir", out,
         "--dataset_root", args.root_path.rstrip("/") + "/", "--model.teacher_checkpoint", teacher_checkpoint])
    return index


def table(rows: dict[str, dict]) -> list[str]:
    lines = [f"{'model':<32}" + "".join(f"{m:>8}" for m in METRICS)]
    for name, metrics in rows.items():
        lines.append(f"{name:<32}" + "".join(f"{metrics.get(m, math.nan):>8.4f}" for m in METRICS))
    student, baseline = rows[next(reversed(rows))], rows[list(rows)[1]]
    lines.append(f"{'student - baseline':<32}" + "".join(f"{student.get(m, math.nan) - baseline.get(m, math.nan):>+8.4f}" for m in METRICS))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root-path", default="data/synthetic")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=None, help="number of generated scenes (default: the version's)")
    parser.add_argument("--keyframes", type=int, default=20, help="keyframes per generated scene")
    parser.add_argument("--force", action="store_true", help="regenerate the dataset even if present")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per model")
    parser.add_argument("--iters-per-epoch", type=int, default=None, help="cut every epoch to this many iterations (smoke runs)")
    parser.add_argument("--np", type=int, default=2, help="processes for training, testing and rendering")
    parser.add_argument("--viz-samples", type=int, default=6)
    parser.add_argument("--run-root", default="runs/demo")
    args = parser.parse_args()
    total = time.time()
    prefix = launcher(args.np)

    t = stage("1. embedded dataset and info files: tools/create_data.py synthetic / nuscenes")
    prepare_data(args.root_path, args.version, args.seed, args.scenes, args.keyframes, args.force)
    print(f"stage time {time.time() - t:.1f} s")

    checkpoints, rows = {}, {}
    for i, (name, config) in enumerate(MODELS.items(), start=2):
        t = stage(f"{i}. train the {name}: {config} ({args.epochs} epochs)")
        checkpoints[name] = train(config, args, prefix)
        print(f"stage time {time.time() - t:.1f} s")

    t = stage("5. evaluate on the val split: tools/test.py (nuScenes devkit, detection_cvpr_2019)")
    for name, config in MODELS.items():
        rows[name] = evaluate(config, checkpoints[name], args, prefix)
    print("\n" + "\n".join(table(rows)))
    print(f"stage time {time.time() - t:.1f} s")

    t = stage("6. render val samples: tools/visualize.py (BEV, cameras, distillation maps)")
    index = render(checkpoints[list(MODELS)[-1]], checkpoints[list(MODELS)[0]], args, prefix)
    print(f"open {os.path.abspath(index)} in a browser")
    print(f"stage time {time.time() - t:.1f} s")

    print(f"\nmake demo: total run time {(time.time() - total) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:  # the tool printed its own error above
        print(f"error: make demo stopped: {' '.join(map(str, e.cmd[-12:]))} exited with status {e.returncode}; "
              "rerun make demo to resume from the finished stages", file=sys.stderr)
        sys.exit(2)
