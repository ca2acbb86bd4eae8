"""Run a trained model over the test split and evaluate it.

    python tools/test.py CONFIG CHECKPOINT [--eval bbox] [--out results.pkl] [--run-dir DIR] [--a.b.c value ...]
    torchpack dist-run -np N python tools/test.py CONFIG CHECKPOINT --eval bbox

Predictions from all processes are gathered in dataset order (the padding of the distributed
sampler dropped), each with its sample ``token``, before rank 0 writes ``--out`` and evaluates
with ``dataset.evaluate``. ``--split train`` reads data.train in test mode with data.test's
pipeline. A student-only checkpoint of a distillation run (``student.*`` keys) loads into the
plain model of the student's config. Without
``--eval`` and ``--out`` it evaluates ``bbox``. With ``--run-dir`` the evaluation files and
``metrics.json`` are written there.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmdet3d.apis.data import build_test_loader_from_config  # noqa: E402
from mmdet3d.apis.runner import (  # noqa: E402
    add_debug_flag,
    build_dataset_from_config,
    build_model_from_config,
    cli_main,
    configure_cpu_threads,
    import_custom_modules,
    prepare_run_dir,
)
from mmdet3d.apis.test import inference  # noqa: E402
from mmdet3d.models.layers import fold_batchnorm  # noqa: E402
from mmdet3d.utils import distributed as dist  # noqa: E402
from mmdet3d.utils.checkpoint import load_inference_weights  # noqa: E402
from mmdet3d.utils.config import ConfigError, load_config  # noqa: E402
from mmdet3d.utils.logging import format_detection_metrics, get_logger  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Test (and evaluate) a checkpoint on data.test of a config.")
    parser.add_argument("config", help="yaml config (the one the checkpoint was trained with)")
    parser.add_argument("checkpoint", help="checkpoint file (.pth)")
    parser.add_argument("--eval", nargs="*", default=None, help="metrics to compute (bbox)")
    parser.add_argument("--out", default=None, help="write the predictions (a list in dataset order) to this .pkl")
    parser.add_argument("--run-dir", "--run_dir", dest="run_dir", default=None, help="directory for evaluation files and metrics.json")
    parser.add_argument("--fuse-conv-bn", action="store_true",
                        help="fold each BatchNorm into the conv before it (same outputs up to float round-off, faster)")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"),
                        help="which data.<split> to run on (default test; train is read with the test pipeline, no augmentation)")
    add_debug_flag(parser)
    return parser.parse_known_args(argv)


@cli_main
def main() -> None:
    args, overrides = parse_args()
    cfg = load_config(args.config, overrides)
    info = dist.init_distributed(timeout_s=cfg.get("dist_timeout_s"))
    configure_cpu_threads(info.local_world_size)
    try:
        logger = get_logger(rank=info.rank)
        import_custom_modules(cfg)
        metrics_to_run = args.eval if args.eval else ([] if args.out else ["bbox"])
        unsupported = [m for m in metrics_to_run if m != "bbox"]
        if unsupported:
            raise ConfigError(f"--eval {' '.join(unsupported)}: unsupported metric (supported: bbox)")
        if args.out and not args.out.endswith((".pkl", ".pickle")):
            raise ConfigError(f"--out {args.out}: the output file must end in .pkl or .pickle")
        run_dir = prepare_run_dir(args.run_dir, rank=info.rank) if args.run_dir else None
        if args.out:
            prepare_run_dir(os.path.dirname(os.path.abspath(args.out)), rank=info.rank)

        model = build_model_from_config(cfg, inference=True)
        load_inference_weights(model, args.checkpoint, log=logger.info)
        model.to(info.device).eval()
        if args.fuse_conv_bn:
            logger.info(f"--fuse-conv-bn: folded {fold_batchnorm(model)} BatchNorm layers into their convs")
        dataset = build_dataset_from_config(cfg, args.split, inference=True)
        loader = build_test_loader_from_config(dataset, cfg, rank=info.rank, world_size=info.world_size)
        logger.info(f"testing {args.checkpoint} on data.{args.split} ({len(dataset)} samples) with {info.world_size} process(es) on {info.device}")
        with dist.timeout_guard():
            results = inference(model, loader, info.device, desc=args.split)
            if info.rank == 0:
                if args.out:
                    with open(args.out, "wb") as f:
                        pickle.dump(results, f)
                    logger.info(f"wrote {len(results)} predictions (each with its sample 'token' where the data has one) to {args.out}")
                for metric in metrics_to_run:
                    metrics = dataset.evaluate(results, out_dir=run_dir, metric=metric)
                    print(format_detection_metrics(metrics), flush=True)
                    if run_dir is not None:
                        with open(os.path.join(run_dir, "metrics.json"), "w") as f:
                            json.dump({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}, f, indent=2)
            dist.barrier()
    finally:
        dist.destroy_distributed()


if __name__ == "__main__":
    main()
