"""Latency per model stage and end-to-end throughput of a config (and optional checkpoint).

    python tools/benchmark.py CONFIG [--checkpoint CKPT] [--device cpu|cuda] [--batch-size 1]
                              [--warmup 3] [--repeats 10] [--split val] [--a.b.c value ...]

Builds the model in eval mode, collates the first ``--batch-size`` samples of ``data.<split>``
once (data loading is timed separately) and times forward passes: stage times come from hooks
on ``encoders.camera.backbone/neck/vtransform``, ``encoders.lidar``, ``fuser``, ``decoder`` and
``heads`` where the model has them; the table shows medians over the repeats.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mmdet3d.apis.benchmark import format_latency_table, measure_latency  # noqa: E402
from mmdet3d.apis.data import resolve_collate, seed_everything, to_device  # noqa: E402
from mmdet3d.apis.runner import add_debug_flag, build_dataset_from_config, build_model_from_config, cli_main, import_custom_modules  # noqa: E402
from mmdet3d.models.layers import fold_batchnorm  # noqa: E402
from mmdet3d.utils.checkpoint import load_inference_weights  # noqa: E402
from mmdet3d.utils.config import ConfigError, load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Time the stages of a model and its end-to-end throughput.")
    parser.add_argument("config", help="yaml config")
    parser.add_argument("--checkpoint", default=None, help="optional weights (timings rarely depend on them, NMS does); "
                        "a distillation run's student-only checkpoint loads into the plain model")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="dataset the input comes from")
    parser.add_argument("--fuse-conv-bn", action="store_true",
                        help="fold each BatchNorm into the conv before it (same outputs up to float round-off, faster)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    add_debug_flag(parser)
    return parser.parse_known_args(argv)


@cli_main
def main() -> None:
    args, overrides = parse_args()
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--batch-size and --repeats must be >= 1 and --warmup >= 0")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, overrides)
    import_custom_modules(cfg)
    seed_everything(int(cfg.get("seed", 0)))

    model = build_model_from_config(cfg, inference=True)
    if args.checkpoint:
        load_inference_weights(model, args.checkpoint)
    model.to(device).eval()
    if args.fuse_conv_bn:
        print(f"--fuse-conv-bn: folded {fold_batchnorm(model)} BatchNorm layers into their convs")
    dataset = build_dataset_from_config(cfg, args.split, inference=True)
    if len(dataset) == 0:
        raise ConfigError(f"data.{args.split} is empty")
    collate = resolve_collate(dataset)

    n = min(args.batch_size, len(dataset))
    t0 = time.perf_counter()
    samples = [dataset[i] for i in range(n)]
    batch = collate(samples)
    data_seconds = (time.perf_counter() - t0) / n
    batch = to_device(batch, device)

    with tqdm(total=args.warmup + args.repeats, desc="benchmark", unit="pass", dynamic_ncols=True) as bar:
        result = measure_latency(model, batch, batch_size=n, device=device, warmup=args.warmup, repeats=args.repeats, progress=bar.update)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {type(model).__name__} ({n_params / 1e6:.2f} M parameters) on {device}, {torch.get_num_threads()} CPU threads")
    if result["prefix"]:
        print(f"stages found under '{result['prefix']}'")
    print(format_latency_table(result))
    print(f"data loading (pipeline + collate): {data_seconds * 1e3:.1f} ms per sample (not in the table)")


if __name__ == "__main__":
    main()
