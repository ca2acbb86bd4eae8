"""Render samples: BEV and camera views with GT and/or predicted boxes, distillation maps, an HTML index.

    python tools/visualize.py CONFIG [--checkpoint CKPT] [--mode gt|pred|both] [--split train|val]
                              [--samples N | --tokens T1 T2 ...] [--score-thr 0.3] [--out-dir viz] [--a.b.c value ...]
    torchpack dist-run -np N python tools/visualize.py CONFIG ...   (each rank renders its share)

Writes ``OUT/bev/<token>.png``, ``OUT/camera/<token>.png``, with a distillation config and its
checkpoint ``OUT/distill/<token>.png`` (``--no-distill`` skips them and runs the student alone),
and ``OUT/index.html`` (open it in a browser). ``--mode`` defaults to ``both`` with a checkpoint
and ``gt`` without. Sizes and contents: ``mmdet3d/apis/visualize/`` and the README.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmdet3d.apis.runner import (  # noqa: E402
    add_debug_flag,
    build_dataset_from_config,
    cli_main,
    configure_cpu_threads,
    import_custom_modules,
    prepare_run_dir,
)
from mmdet3d.apis.visualize import (  # noqa: E402
    MODES,
    SampleRenderer,
    VisualizeError,
    is_distiller_config,
    load_visualization_model,
    select_indices,
    visualize,
)
from mmdet3d.utils import distributed as dist  # noqa: E402
from mmdet3d.utils.checkpoint import CheckpointError  # noqa: E402
from mmdet3d.utils.config import ConfigError, load_config  # noqa: E402
from mmdet3d.utils.logging import get_logger  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Render samples of a config's dataset (and a model's predictions).",
                                     epilog="Any other --a.b.c value pair overrides that config key (it must exist).")
    parser.add_argument("config", help="yaml config (the one the checkpoint was trained with)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint (.pth) whose predictions are drawn")
    parser.add_argument("--mode", choices=MODES, default=None, help="boxes to draw (default: both with --checkpoint, else gt)")
    parser.add_argument("--split", choices=("train", "val"), default="val", help="data.<split> to render (train: without augmentation)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--samples", type=int, default=None, help="render the first N samples (default 10)")
    which.add_argument("--tokens", nargs="+", default=None, help="render these sample tokens")
    parser.add_argument("--score-thr", "--score_thr", dest="score_thr", type=float, default=0.3,
                        help="draw predictions scoring at least this (default 0.3)")
    parser.add_argument("--out-dir", "--out_dir", dest="out_dir", default="viz", help="output folder (default viz)")
    parser.add_argument("--no-distill", action="store_true", help="with a distillation config: run the student alone, no distillation maps")
    add_debug_flag(parser)
    return parser.parse_known_args(argv)


@cli_main(extra_errors=(VisualizeError,))
def main() -> None:
    args, overrides = parse_args()
    cfg = load_config(args.config, overrides)
    mode = args.mode or ("both" if args.checkpoint else "gt")
    if mode != "gt" and not args.checkpoint:
        raise ConfigError(f"--mode {mode} draws predictions: give --checkpoint")
    info = dist.init_distributed(timeout_s=cfg.get("dist_timeout_s"))
    configure_cpu_threads(info.local_world_size)
    try:
        logger = get_logger(rank=info.rank)
        import_custom_modules(cfg)
        out_dir = prepare_run_dir(args.out_dir, rank=info.rank)
        dataset = build_dataset_from_config(cfg, args.split, inference=True)
        indices = select_indices(dataset, args.tokens, args.samples if args.samples is not None or args.tokens else 10)
        model, distiller = None, False
        if args.checkpoint:
            distilling = not args.no_distill and is_distiller_config(cfg)
            try:
                model, distiller = load_visualization_model(cfg, args.checkpoint, distill=distilling, log=logger.info)
            except CheckpointError as e:
                if not distilling:
                    raise
                raise CheckpointError(f"{e}; --no-distill renders the student alone, without the distillation maps") from None
            model.to(info.device)
        renderer = SampleRenderer(cfg, dataset, out_dir, mode, model, distiller, args.score_thr, info.device)
        logger.info(f"rendering {len(indices)} samples of data.{args.split} ({mode}{', distillation maps' if distiller else ''}) "
                    f"with {info.world_size} process(es) into {out_dir}")
        with dist.timeout_guard():
            records = visualize(renderer, indices, title=f"{os.path.basename(args.config)} data.{args.split}")
        if info.rank == 0:
            logger.info(f"wrote {len(records)} samples; open {os.path.join(out_dir, 'index.html')}")
    finally:
        dist.destroy_distributed()


if __name__ == "__main__":
    main()
