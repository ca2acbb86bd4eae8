"""How hard each loss term pulls on the model: per-term gradient norms of a training step.

    python benchmarks/loss_gradients.py CONFIG [--checkpoint CKPT ...] [--root data/benchmark]
        [--batches 4] [--a.b.c value ...]

For each checkpoint (``init`` = the freshly built model, the default) and a few fixed training
batches, prints each loss term's value and the L2 norm of its gradient on the camera encoder and on
the rest of the trainable model (fuser, decoder, heads, loss adapters), as means over the batches.
The detection terms (``loss/object/*``) are summed into one ``detection`` row. A term whose
gradient is many times the detection term's dominates the clipped update (``optimizer.grad_clip``):
this is how the synthetic TiG inner-depth weight was chosen (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmdet3d.apis.runner import build_dataset_from_config, build_model_from_config  # noqa: E402
from mmdet3d.datasets.pipelines.formatting import collate  # noqa: E402
from mmdet3d.utils.checkpoint import load_checkpoint_file, load_model_weights  # noqa: E402
from mmdet3d.utils.config import load_config  # noqa: E402


def _norm(grads) -> float:
    return float(sum((g.double() ** 2).sum() for g in grads if g is not None)) ** 0.5


def parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters split into the camera encoder and everything else."""
    groups: dict[str, list[torch.nn.Parameter]] = {"camera encoder": [], "rest": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["camera encoder" if ".camera." in f".{name}" else "rest"].append(p)
    return groups


def term_gradients(model: torch.nn.Module, batches: list[dict]) -> dict[str, dict[str, float]]:
    """-> {term: {"value": mean, <group>: mean gradient norm}} over ``batches``."""
    groups = parameter_groups(model)
    rows: dict[str, dict[str, list[float]]] = {}
    for batch in batches:
        losses = model(batch)
        terms = {"detection": sum(v for k, v in losses.items() if k.startswith("loss/object/"))}
        terms.update({k.removeprefix("loss/"): v for k, v in losses.items() if not k.startswith("loss/object/")})
        for name, value in terms.items():
            row = rows.setdefault(name, {"value": []})
            row["value"].append(float(value.detach()))
            for group, params in groups.items():
                grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                row.setdefault(group, []).append(_norm(grads))
    return {name: {k: statistics.mean(v) for k, v in row.items()} for name, row in rows.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--checkpoint", nargs="*", default=["init"], help="checkpoints to load ('init': none)")
    parser.add_argument("--root", default="data/benchmark")
    parser.add_argument("--batches", type=int, default=4)
    args, overrides = parser.parse_known_args()
    cfg = load_config(args.config, ["--dataset_root", args.root.rstrip("/") + "/", *overrides])
    dataset = build_dataset_from_config(cfg, "train")
    per_gpu = cfg["data"]["samples_per_gpu"]
    stride = max(1, len(dataset) // max(args.batches * per_gpu, 1))
    batches = [collate([dataset[(i * per_gpu + j) * stride % len(dataset)] for j in range(per_gpu)]) for i in range(args.batches)]
    for checkpoint in args.checkpoint:
        torch.manual_seed(0)
        model = build_model_from_config(cfg).train()
        if checkpoint != "init":
            load_model_weights(model, load_checkpoint_file(checkpoint)["state_dict"], strict=False, source=checkpoint)
        print(f"\n{checkpoint} ({args.batches} batches of {per_gpu}; gradient L2 norms)")
        print("| term | value | camera encoder | rest |\n|---|---|---|---|")
        for name, row in term_gradients(model, batches).items():
            print(f"| {name} | {row['value']:.3f} | {row['camera encoder']:.2f} | {row['rest']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
