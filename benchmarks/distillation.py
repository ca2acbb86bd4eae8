"""The distillation benchmark on the embedded benchmark split (480 train / 120 val keyframes).

    python benchmarks/distillation.py                    # everything, two seeds, table into RESULTS.md
    python benchmarks/distillation.py --seeds 0          # one seed
    python benchmarks/distillation.py --step-cost-only   # only the training-step cost ratios
    python benchmarks/distillation.py --finished-only    # train nothing: the table of the finished runs
    python benchmarks/distillation.py --models TiG ablation  # train only the rows naming these; table all current rows

Generates the split when its info files are missing, trains the camera+LiDAR teacher once, then
per seed the BEVDet-style baseline (no depth supervision), the BEVDepth-style baseline (dense
depth loss), the ablation that only copies the teacher's decoder and heads into that student, the
TiG student (the BEVDepth-style student plus the TiG losses, teacher frozen), the SimDistill,
LGKD (camera+LiDAR teacher, and the larger camera-only teacher, trained once first) and
self-assessment (anchor and sequence-level) students, all with the same schedule, each evaluated
through the devkit at the end of its training. A finished run (its final evaluation in its
``log.jsonl``) is reused and an interrupted one resumes from its ``latest.pth``, unless it is
stale: its saved ``configs.yaml`` differs from what its config gives now (model or schedule), or,
for a student, the teacher checkpoint it was distilled from (sha256 in its ``teacher.json``) is not
the current one. A stale run is moved aside to ``<run>.stale-<time>`` and trained again
(``--finished-only`` leaves it out of the table and says why). The table (mean and half-range over
seeds) goes into ``benchmarks/RESULTS.md``
between markers, with the command; the step-cost ratios are measured in this process.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DET = "configs/synthetic/det/centerhead/second"
TEACHER = f"{DET}/camera+lidar/convfuser.yaml"
LIDAR_TEACHER = f"{DET}/lidar/pointpillars.yaml"
LARGE_CAMERA_TEACHER = f"{DET}/camera/lss_depth_large.yaml"
OTHER_TEACHERS = {LARGE_CAMERA_TEACHER: "larger camera-only teacher (LGKD)"}  # trained once (seed 0) when a row needs it
MODELS = {  # name -> (config, teacher: False (none), True (the camera+LiDAR teacher) or an OTHER_TEACHERS config)
    "BEVDet-style baseline (no depth supervision)": (f"{DET}/camera/lss.yaml", False),
    "BEVDepth-style baseline (dense depth loss)": (f"{DET}/camera/lss_depth.yaml", False),
    "teacher decoder and heads, no distillation loss (ablation)": ("configs/synthetic/distill/teacher_init.yaml", True),
    "TiG student (camera+LiDAR teacher)": ("configs/synthetic/distill/tig/convfuser.yaml", True),
    "SimDistill student (camera+LiDAR teacher)": ("configs/synthetic/distill/simdistill/convfuser.yaml", True),
    "LGKD student (camera+LiDAR teacher)": ("configs/synthetic/distill/lgkd/convfuser.yaml", True),
    "LGKD student (larger camera-only teacher)": ("configs/synthetic/distill/lgkd/camera_large.yaml", LARGE_CAMERA_TEACHER),
    "self-assessment student, anchor tokens (camera+LiDAR teacher)": ("configs/synthetic/distill/self_assessment/anchor.yaml", True),
    "self-assessment student, sequence-level (camera+LiDAR teacher)": ("configs/synthetic/distill/self_assessment/sequence.yaml", True),
}
METRICS = ["mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"]
START, END = "<!-- distillation-benchmark:start -->", "<!-- distillation-benchmark:end -->"


def run_name(config: str) -> str:
    return os.path.splitext(os.path.relpath(config, "configs"))[0].replace("/", "_")


def final_metrics(run_dir: Path) -> dict | None:
    """The last evaluation in a finished run's log.jsonl, or None when the run has not finished."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    metrics, epochs = None, None
    with open(log) as f:
        for line in f:
            record = json.loads(line)
            if record.get("mode") == "val":
                metrics = record
    config = run_dir / "configs.yaml"
    if metrics is not None and config.is_file():
        import yaml

        epochs = yaml.safe_load(config.read_text()).get("max_epochs")
    return metrics if metrics is not None and metrics.get("epoch") == epochs else None


COMPARED_KEYS = ("model", "max_epochs", "optimizer", "optimizer_config", "lr_config")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_teacher(run_dir: Path, teacher: Path, sha: str | None = None) -> None:
    """``teacher.json``: which teacher checkpoint (path and sha256) the student in ``run_dir`` reads."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "teacher.json").write_text(json.dumps({"checkpoint": str(teacher), "sha256": sha or file_sha256(teacher)}) + "\n")


def names_row(name: str, words: list[str] | None) -> bool:
    """``--models``: the row ``name`` contains one of ``words`` (case-insensitive); no words: every row."""
    return not words or any(w.lower() in name.lower() for w in words)


def stale_reason(config: str, run_dir: Path, overrides: list[str], teacher: Path | None) -> str | None:
    """Why a finished run no longer stands for ``config`` (None when it does): the model or schedule
    in its ``configs.yaml`` differs from the config's now, or its teacher checkpoint changed. A run
    from before ``teacher.json`` existed counts as distilled from the current teacher checkpoint when
    that file is older than the run's ``configs.yaml``; the fingerprint is then recorded."""
    import yaml

    from mmdet3d.utils.config import load_config

    saved = yaml.safe_load((run_dir / "configs.yaml").read_text())
    current = load_config(str(ROOT / config), overrides)
    for cfg in (saved, current):  # where the teacher checkpoint lies is not what it is: its sha256 below
        cfg.get("model", {}).pop("teacher_checkpoint", None)
    changed = [key for key in COMPARED_KEYS if saved.get(key) != current.get(key)]
    if changed:
        return f"its configs.yaml differs from {config} now in {', '.join(changed)}"
    if teacher is None:
        return None
    record, sha = run_dir / "teacher.json", file_sha256(teacher)
    if record.is_file():
        trained_with = json.loads(record.read_text()).get("sha256")
        return None if trained_with == sha else f"distilled from another checkpoint than {teacher} (sha256 {sha[:12]})"
    if teacher.stat().st_mtime > (run_dir / "configs.yaml").stat().st_mtime:
        return f"{teacher} was written after this run started"
    record_teacher(run_dir, teacher, sha)
    return None


class NotFinished(Exception):
    """``--finished-only``: a run that has not finished is left out of the table."""


def train(config: str, run_dir: Path, root: str, seed: int, teacher: Path | None = None,
          finished_only: bool = False) -> dict:
    """Train ``config`` into ``run_dir`` (``teacher``: the checkpoint a distiller reads) or reuse it."""
    overrides = ["--dataset_root", root.rstrip("/") + "/", "--seed", str(seed)]
    if teacher is not None:
        overrides += ["--model.teacher_checkpoint", str(teacher)]
    done = final_metrics(run_dir)
    # a finished run or an interrupted one (it would resume) must still stand for config and teacher
    stale = stale_reason(config, run_dir, overrides, teacher) if (run_dir / "configs.yaml").is_file() else None
    if done is not None and stale is None:
        print(f"reusing {run_dir} (finished: mAP {done['mAP']:.4f}, NDS {done['NDS']:.4f})", flush=True)
        return done
    if finished_only:
        print(f"left out: {run_dir}: {stale or 'not finished'}", flush=True)
        raise NotFinished(run_dir)
    if stale is not None:
        aside = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"{run_dir} is stale ({stale}): moved to {aside}, training again", flush=True)
        run_dir.rename(aside)
    cmd = [sys.executable, str(ROOT / "tools/train.py"), config, "--run-dir", str(run_dir), *overrides]
    if teacher is not None:  # before training, so that an interrupted run knows its teacher too
        record_teacher(run_dir, teacher)
    if (run_dir / "latest.pth").exists():
        cmd.append("--resume")
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    metrics = final_metrics(run_dir)
    if metrics is None:
        raise RuntimeError(f"{run_dir}: training ended without a final evaluation in log.jsonl")
    metrics["train_minutes"] = (time.time() - start) / 60
    with open(run_dir / "benchmark_time.json", "w") as f:
        json.dump({"train_minutes": metrics["train_minutes"]}, f)
    return metrics


def ensure_split(root: str, scenes: int) -> None:
    if all((ROOT / root / f"nuscenes_infos_{s}.pkl").is_file() for s in ("train", "val")):
        print(f"reusing the embedded benchmark split in {root}", flush=True)
        return
    for args in (["synthetic", "--root-path", root, "--version", "v1.0-trainval", "--scenes", str(scenes)],
                 ["nuscenes", "--root-path", root, "--version", "v1.0-trainval", "--no-database"]):
        subprocess.run([sys.executable, str(ROOT / "tools/create_data.py"), *args], check=True, cwd=ROOT)


def summarise(rows: dict[str, list[dict]]) -> list[str]:
    lines = ["| model | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name, runs in rows.items():
        cells = []
        for key in METRICS:
            values = [r[key] for r in runs]
            mean = statistics.fmean(values)
            cells.append(f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {(max(values) - min(values)) / 2:.4f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def write_results(lines: list[str], command: str) -> None:
    path = ROOT / "benchmarks/RESULTS.md"
    text = path.read_text() if path.is_file() else "# Measured figures\n"
    block = "\n".join([START, "", f"`{command}`", "", *lines, "", END])
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## Distillation benchmark (embedded benchmark split, val)\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote the table into {path}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/benchmark")
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--run-root", default="runs/benchmark")
    parser.add_argument("--lidar-teacher", action="store_true", help="also train and report the LiDAR-only teacher")
    parser.add_argument("--step-cost-only", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the table without editing RESULTS.md")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: tabulate the finished runs, each row with the seeds it has")
    parser.add_argument("--models", nargs="+", default=None, metavar="WORD",
                        help="train only the rows whose name contains one of these words (case-insensitive; the "
                             "camera+LiDAR teacher always); the other rows are tabulated when finished and current")
    args = parser.parse_args()
    if args.models:
        names = list(MODELS) + list(OTHER_TEACHERS.values())
        unmatched = [w for w in args.models if not any(names_row(n, [w]) for n in names)]
        if unmatched:
            parser.error(f"--models {unmatched} match no row; the rows: {names}")
    start = time.time()
    command = "python benchmarks/distillation.py " + " ".join(sys.argv[1:])
    run_root = ROOT / args.run_root
    if not args.step_cost_only:
        ensure_split(args.root, args.scenes)
    teacher_dir = run_root / run_name(TEACHER)
    results: dict[str, list[dict]] = {}
    if not args.step_cost_only:
        only = args.finished_only

        def add(name: str, *run) -> None:
            chosen = name.startswith("teacher (") or names_row(name, args.models)
            try:
                results.setdefault(name, []).append(train(*run, finished_only=only or not chosen))
            except NotFinished:
                pass

        add("teacher (camera+LiDAR)", TEACHER, teacher_dir, args.root, 0)
        if args.lidar_teacher:
            add("LiDAR-only teacher", LIDAR_TEACHER, run_root / run_name(LIDAR_TEACHER), args.root, 0)
        teachers = {True: teacher_dir}
        for config in dict.fromkeys(t for _, t in MODELS.values() if isinstance(t, str)):
            teachers[config] = run_root / run_name(config)
            add(OTHER_TEACHERS[config], config, teachers[config], args.root, 0)
        for seed in args.seeds:
            for name, (config, needs_teacher) in MODELS.items():
                if needs_teacher and only and final_metrics(teachers[needs_teacher]) is None:
                    continue
                teacher = teachers[needs_teacher] / "latest.pth" if needs_teacher else None
                add(name, config, run_root / f"{run_name(config)}_seed{seed}", args.root, seed, teacher)
        results = {name: runs for name, runs in results.items() if runs}
    from step_cost import step_cost_lines

    cost = step_cost_lines(args.root, teacher_dir / "latest.pth")
    lines = (summarise(results) if results else []) + ["", *cost]
    print("\n".join(lines))
    print(f"\nbenchmarks/distillation.py: total time {(time.time() - start) / 60:.1f} min (target: under 100 min)")
    if not args.no_write:
        write_results(lines + ["", f"Total time of that run: {(time.time() - start) / 60:.1f} min."], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
