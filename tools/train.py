"""Train a model from a yaml config.

    python tools/train.py CONFIG [--run-dir DIR] [--resume] [--load_from CKPT] [--a.b.c value ...]
    torchpack dist-run -np N python tools/train.py CONFIG ...
    torchrun --nproc_per_node N tools/train.py CONFIG ...

The run directory (default ``runs/<config path below configs/>``) receives ``configs.yaml``
(the resolved config), ``log.txt``, ``log.jsonl``, ``tensorboard/``, ``epoch_N.pth`` and a
``latest.pth`` link. ``--resume`` continues from ``latest.pth`` of the run directory (or from
``resume_from`` in the config); ``--load_from`` only initialises the weights.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmdet3d.apis.data import seed_everything  # noqa: E402
from mmdet3d.apis.runner import (  # noqa: E402
    add_debug_flag,
    build_dataset_from_config,
    build_model_from_config,
    cli_main,
    configure_cpu_threads,
    default_run_dir,
    import_custom_modules,
    prepare_run_dir,
)
from mmdet3d.apis.train import train_model  # noqa: E402
from mmdet3d.utils import distributed as dist  # noqa: E402
from mmdet3d.utils.checkpoint import find_resumable_checkpoint, remove_stale_temporary_files  # noqa: E402
from mmdet3d.utils.config import ConfigError, dump_config, load_config  # noqa: E402
from mmdet3d.utils.logging import RunLogger  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Train a BEV detector (or distiller) from a yaml config.",
        epilog="Any other --a.b.c value pair overrides that config key (it must exist).",
    )
    parser.add_argument("config", help="yaml config; each folder's default.yaml above it is inherited")
    parser.add_argument("--run-dir", "--run_dir", dest="run_dir", default=None, help="output directory (default: runs/<config path>)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the run dir")
    parser.add_argument("--load_from", "--load-from", dest="load_from", default=None, help="initialise weights from this checkpoint")
    parser.add_argument("--iters-per-epoch", type=int, default=None, help="debug: cut every epoch to this many iterations")
    parser.add_argument("--debug-rank-dumps", action="store_true", help="debug: every rank saves its weights to run_dir/debug/ after step 1 and at the end")
    add_debug_flag(parser)
    return parser.parse_known_args(argv)


def count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n:,}"


@cli_main
def main() -> None:
    args, overrides = parse_args()
    cfg = load_config(args.config, overrides)
    info = dist.init_distributed(timeout_s=cfg.get("dist_timeout_s"))
    configure_cpu_threads(info.local_world_size)
    import_custom_modules(cfg)

    run_dir = prepare_run_dir(args.run_dir or default_run_dir(args.config), rank=info.rank)
    logger = RunLogger(run_dir, rank=info.rank)
    try:
        if info.rank == 0:
            for path in remove_stale_temporary_files(run_dir):
                logger.info(f"removed {path}, left behind by a killed write")
            dump_config(cfg, os.path.join(run_dir, "configs.yaml"))
        logger.info(f"config {args.config} -> {os.path.join(run_dir, 'configs.yaml')}")
        logger.info(f"launcher {info.launcher}, world size {info.world_size}, backend {info.backend or 'none'}, device {info.device}")

        resume_from = cfg.get("resume_from")
        if args.resume:
            resume_from, skipped = find_resumable_checkpoint(run_dir)
            for reason in skipped:
                logger.warning(f"--resume: passing over an unreadable checkpoint: {reason}")
            if resume_from is None:
                raise ConfigError(f"--resume: no checkpoint (latest.pth or epoch_N.pth) that loads in run dir {run_dir}")
            if skipped:
                logger.warning(f"--resume: falling back to {resume_from}, the newest complete checkpoint")
        load_from = args.load_from or cfg.get("load_from")
        if resume_from and load_from:
            print_once = f"resuming from {resume_from}; load_from {load_from} is ignored"
            logger.warning(print_once)
            load_from = None

        seed = int(cfg.get("seed", 0))
        # same seed on every rank for the weights, so all replicas start identical
        seed_everything(seed, deterministic=bool(cfg.get("deterministic", False)))
        model = build_model_from_config(cfg)
        train_dataset = build_dataset_from_config(cfg, "train")
        val_dataset = None
        if int(cfg.get("eval_interval", 1) or 0) > 0 and (cfg.get("data") or {}).get("val") is not None:
            val_dataset = build_dataset_from_config(cfg, "val")
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"model {type(model).__name__}: {count(n_params)} parameters ({count(n_train)} trainable); train samples {len(train_dataset)}")

        with dist.timeout_guard():
            summary = train_model(
                model,
                train_dataset,
                cfg,
                run_dir=run_dir,
                info=info,
                logger=logger,
                val_dataset=val_dataset,
                resume_from=resume_from,
                load_from=load_from,
                max_iters_per_epoch=args.iters_per_epoch,
                debug_rank_dumps=args.debug_rank_dumps,
            )
        logger.info(f"finished: {summary['epochs']} epochs, {summary['steps']} optimiser steps; last checkpoint {summary['last_checkpoint']}")
    finally:
        logger.close()
        dist.destroy_distributed()


if __name__ == "__main__":
    main()
