"""The training loop shared by ``tools/train.py``: DDP, accumulation, AMP, checkpoints, evaluation.

Config keys read here (defaults in brackets): ``seed`` [0], ``max_epochs``,
``data.samples_per_gpu``, ``data.workers_per_gpu`` [0], ``optimizer``, ``optimizer_config.grad_clip``
[null], ``optimizer_config.cumulative_iters`` [1], ``lr_config`` [fixed], ``fp16`` [false],
``sync_bn`` [false], ``find_unused_parameters`` [false], ``checkpoint_interval`` [1],
``eval_interval`` [1; 0 disables], ``log_interval`` [10], ``eval_render_sample`` [null: the index of
the val sample whose BEV render, GT and predictions, is logged to TensorBoard at each evaluation].
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mmdet3d.utils.checkpoint import cpu_state_dict, load_checkpoint_file, load_model_weights, save_checkpoint, update_latest_link
from mmdet3d.apis.data import build_test_loader_from_config, build_train_loader, start_epoch, to_device
from mmdet3d.apis.runner import NonFiniteLossError
from mmdet3d.apis.test import inference
from mmdet3d.apis.visualize import eval_bev_image, model_bev_range
from mmdet3d.core.lr_scheduler import build_lr_scheduler
from mmdet3d.core.optimizer import GradientStepper, build_optimizer
from mmdet3d.utils import distributed as dist
from mmdet3d.utils.config import ConfigError
from mmdet3d.utils.distributed import DistInfo
from mmdet3d.utils.logging import RunLogger, format_detection_metrics, format_seconds

__all__ = ["parse_losses", "Trainer", "train_model", "evaluate_model"]


def parse_losses(losses: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss (sum of the terms whose name contains ``loss``) and every term as a scalar."""
    if not isinstance(losses, Mapping):
        raise TypeError(f"model in train mode must return a dict of losses, got {type(losses).__name__}")
    terms: dict[str, torch.Tensor] = {}
    for name, value in losses.items():
        if isinstance(value, torch.Tensor):
            terms[name] = value.float().mean()
        elif isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
            terms[name] = sum(v.float().mean() for v in value)
        elif isinstance(value, (int, float)):
            terms[name] = torch.tensor(float(value))
        else:
            raise TypeError(f"loss dict entry {name!r} is a {type(value).__name__}, expected a tensor")
    loss_terms = [v for k, v in terms.items() if "loss" in k]
    if not loss_terms:
        raise ValueError(f"the model returned no loss term (no key containing 'loss' among {list(terms)})")
    return sum(loss_terms), terms


def _lr_of_default_group(optimizer: torch.optim.Optimizer) -> float:
    for group in optimizer.param_groups:
        if group.get("name") == "default":
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])


def evaluate_model(model: nn.Module, dataset: Any, cfg: Mapping[str, Any], info: DistInfo, out_dir: str, desc: str = "eval",
                   on_results: Callable[[list[Any]], None] | None = None) -> dict[str, Any] | None:
    """Distributed inference over ``dataset``; rank 0 returns ``dataset.evaluate``'s metrics, others None.
    ``on_results`` is called on rank 0 with the predictions (dataset order) after the evaluation."""
    loader = build_test_loader_from_config(dataset, cfg, rank=info.rank, world_size=info.world_size)
    results = inference(model, loader, info.device, desc=desc)
    metrics = None
    if info.rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        metrics = dataset.evaluate(results, out_dir=out_dir)
        if on_results is not None:
            on_results(results)
    dist.barrier()
    return metrics


def _check_finite(terms: dict[str, torch.Tensor], epoch: int, iteration: int, step: int, ckpt: str | None) -> None:
    bad_here = [name for name, value in terms.items() if not torch.isfinite(value.detach()).all()]
    if len(bad_here) > 1 and "loss" in bad_here:
        bad_here.remove("loss")  # the total is bad because a term is: name the term
    if not dist.all_reduce_flag(bool(bad_here)):
        return
    reports = dist.all_gather_object([(name, float(terms[name].detach())) for name in bad_here])
    parts = [f"{name}={value} on rank {r}" for r, found in enumerate(reports) for name, value in found]
    keep = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint had been written yet"
    raise NonFiniteLossError(
        f"non-finite loss at epoch {epoch + 1}, iteration {iteration + 1} of the epoch (global step {step + 1}): "
        f"{', '.join(parts)}; training stopped before applying this step; {keep}"
    )


def _dump_rank_state(run_dir: str, model: nn.Module, tag: str) -> None:
    path = os.path.join(run_dir, "debug", f"rank{dist.get_rank()}_{tag}.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(cpu_state_dict(model), path)


class Trainer:
    """One training run: the model (DDP-wrapped with several processes), loader, optimiser, schedule."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        cfg: Mapping[str, Any],
        run_dir: str,
        info: DistInfo,
        logger: RunLogger,
        val_dataset: Any = None,
        max_iters_per_epoch: int | None = None,
        debug_rank_dumps: bool = False,
    ):
        if "max_epochs" not in cfg:
            raise ConfigError("config key 'max_epochs' is missing")
        self.cfg, self.run_dir, self.info, self.logger = cfg, run_dir, info, logger
        self.val_dataset = val_dataset
        self.debug_rank_dumps = debug_rank_dumps
        self.device = info.device
        self.seed = int(cfg.get("seed", 0))
        self.max_epochs = int(cfg["max_epochs"])
        self.log_interval = max(1, int(cfg.get("log_interval", 10)))
        self.checkpoint_interval = max(1, int(cfg.get("checkpoint_interval", 1)))
        self.eval_interval = int(cfg.get("eval_interval", 1) or 0)
        self.eval_render_sample = cfg.get("eval_render_sample")
        data_cfg = cfg.get("data") or {}
        self.samples_per_gpu = int(data_cfg.get("samples_per_gpu", 1))
        opt_cfg = cfg.get("optimizer_config") or {}
        fp16 = bool(cfg.get("fp16", False))
        if fp16 and self.device.type != "cuda":
            logger.warning("fp16: true ignored: mixed precision needs CUDA; training in float32 on CPU")
            fp16 = False

        self.model = model.to(self.device)
        if cfg.get("sync_bn", False) and info.distributed:
            if self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                logger.info("converted BatchNorm layers to SyncBatchNorm")
            else:
                logger.warning("sync_bn: true ignored on CPU (SyncBatchNorm needs a GPU)")

        self.loader = build_train_loader(
            train_dataset,
            samples_per_gpu=self.samples_per_gpu,
            workers_per_gpu=int(data_cfg.get("workers_per_gpu", 0)),
            rank=info.rank,
            world_size=info.world_size,
            seed=self.seed,
        )
        n = len(self.loader)
        self.iters_per_epoch = min(n, int(max_iters_per_epoch)) if max_iters_per_epoch else n
        if self.iters_per_epoch == 0:
            raise ConfigError(f"data.train has {len(train_dataset)} samples: nothing to train on")
        self.optimizer = build_optimizer(self.model, cfg.get("optimizer") or {})
        self.cumulative = int(opt_cfg.get("cumulative_iters", 1) or 1)
        self.steps_per_epoch = math.ceil(self.iters_per_epoch / self.cumulative)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.get("lr_config"), total_iters=self.steps_per_epoch * self.max_epochs)
        self.stepper = GradientStepper(
            self.optimizer,
            scheduler=self.scheduler,
            grad_clip=opt_cfg.get("grad_clip"),
            cumulative_iters=self.cumulative,
            fp16=fp16,
            iters_per_epoch=self.iters_per_epoch,
        )
        self.train_module: nn.Module = self.model
        self._check_eval_render()
        self.first_epoch, self.global_step, self.last_checkpoint = 0, 0, None
        self.metrics: dict[str, Any] | None = None

    def _check_eval_render(self) -> None:
        """``eval_render_sample`` names a val sample that can be rendered, with a model that has a BEV range."""
        index = self.eval_render_sample
        if index is None or self.val_dataset is None or self.eval_interval <= 0:
            self.eval_render_sample = None
            return
        where = f"eval_render_sample {index!r}"
        if not isinstance(index, int) or not 0 <= index < len(self.val_dataset):
            raise ConfigError(f"{where}: must be a sample index of data.val (0 to {len(self.val_dataset) - 1}) or null")
        if not hasattr(self.val_dataset, "get_data_info"):
            raise ConfigError(f"{where}: data.val ({type(self.val_dataset).__name__}) cannot be rendered (no get_data_info); "
                              "set eval_render_sample: null")
        try:
            model_bev_range(self.model)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}; set eval_render_sample: null") from None

    # ----- initial state -----

    def load_weights(self, path: str) -> None:
        """``load_from``: weights only; missing and unexpected keys are reported, not fatal."""
        ckpt = load_checkpoint_file(path)
        report = load_model_weights(self.model, ckpt["state_dict"], strict=False, source=f"load_from {path}")
        missing, unexpected = report
        self.logger.info(f"initialised weights from {path}: {len(missing)} missing keys, {len(unexpected)} unexpected keys")
        if missing:
            self.logger.warning(f"keys missing in {path} (kept at initialisation): {', '.join(missing[:20])}")
        if unexpected:
            self.logger.warning(f"keys in {path} unused by the model: {', '.join(unexpected[:20])}")

    def resume(self, path: str) -> None:
        """Weights, optimiser, schedule position, AMP scaler, epoch and step counters."""
        ckpt = load_checkpoint_file(path)
        load_model_weights(self.model, ckpt["state_dict"], strict=True, source=f"resume checkpoint {path}")
        if not ckpt.get("optimizer") or not ckpt.get("scheduler"):
            raise ConfigError(f"resume checkpoint {path} has no optimizer/scheduler state (use --load_from)")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.stepper.load_state_dict(ckpt.get("stepper") or {})
        meta = ckpt.get("meta", {})
        self.first_epoch, self.global_step, self.last_checkpoint = int(meta.get("epoch", 0)), int(meta.get("iter", 0)), path
        lr = _lr_of_default_group(self.optimizer)
        self.logger.info(f"resumed from {path}: {self.first_epoch} epochs done, {self.global_step} steps, lr {lr:.3e}")

    # ----- the loop -----

    def run(self) -> dict[str, Any]:
        if self.info.distributed:
            self.train_module = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(self.cfg.get("find_unused_parameters", False)),
            )
        self.logger.info(
            f"training {self.max_epochs} epochs x {self.iters_per_epoch} iterations on {self.info.world_size} process(es) "
            f"({self.device}, batch {self.samples_per_gpu} per process, accumulation {self.cumulative}), "
            f"{self.steps_per_epoch * self.max_epochs} optimiser steps; run dir {self.run_dir}"
        )
        if self.first_epoch >= self.max_epochs:
            self.logger.info(f"nothing to do: the checkpoint has already {self.first_epoch} of {self.max_epochs} epochs")
        self.t_start = time.time()
        for epoch in range(self.first_epoch, self.max_epochs):
            t_epoch = time.time()
            self.train_epoch(epoch)
            self.logger.info(f"epoch {epoch + 1} done in {format_seconds(time.time() - t_epoch)}")
            dist.broadcast_buffers(self.model)  # every rank evaluates/saves rank 0's BatchNorm statistics
            last = epoch + 1 == self.max_epochs
            if (epoch + 1) % self.checkpoint_interval == 0 or last:
                self.save(epoch)
            if self.val_dataset is not None and self.eval_interval > 0 and ((epoch + 1) % self.eval_interval == 0 or last):
                self.evaluate(epoch)
        if self.debug_rank_dumps:
            _dump_rank_state(self.run_dir, self.model, "final")
        dist.barrier()
        return {"epochs": self.max_epochs, "steps": self.global_step, "metrics": self.metrics, "last_checkpoint": self.last_checkpoint}

    def train_epoch(self, epoch: int) -> None:
        start_epoch(self.loader, epoch=epoch, seed=self.seed, rank=self.info.rank)
        self.train_module.train()
        window: dict[str, list[float]] = {}
        desc = f"epoch {epoch + 1}/{self.max_epochs}"
        with tqdm(total=self.iters_per_epoch, desc=desc, disable=self.info.rank != 0, dynamic_ncols=True) as bar:
            for i, batch in enumerate(self.loader):
                if i >= self.iters_per_epoch:
                    break
                dist.report_progress(f"epoch {epoch + 1}, iteration {i + 1}")
                terms = self.train_step(to_device(batch, self.device), epoch, i)
                for name, value in terms.items():
                    window.setdefault(name, []).append(value)
                lr = _lr_of_default_group(self.optimizer)
                bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}")
                bar.update(1)
                if (i + 1) % self.log_interval == 0 or i + 1 == self.iters_per_epoch:
                    self.log_window(window, epoch, i, lr)
                    window.clear()

    def train_step(self, batch: Any, epoch: int, i: int) -> dict[str, float]:
        """Forward, finite check, backward and (every ``cumulative_iters``) the optimiser step."""
        with self.stepper.no_sync_context(self.train_module, i):
            with self.stepper.autocast(self.device):
                losses = self.train_module(batch)
            loss, terms = parse_losses(losses)
            terms["loss"] = loss.detach()
            _check_finite(terms, epoch, i, self.global_step, self.last_checkpoint)
            stepped = self.stepper.backward(loss, i)
        if stepped:
            self.global_step += 1
            if self.debug_rank_dumps and self.global_step == 1:
                _dump_rank_state(self.run_dir, self.model, "step1")
        return {name: float(value.detach()) for name, value in terms.items()}

    def log_window(self, window: dict[str, list[float]], epoch: int, i: int, lr: float) -> None:
        averaged = dist.all_reduce_mean({k: sum(v) / len(v) for k, v in sorted(window.items())})
        averaged["lr"] = lr
        if self.stepper.last_grad_norm is not None:
            averaged["grad_norm"] = self.stepper.last_grad_norm
        done = (epoch - self.first_epoch) * self.iters_per_epoch + i + 1
        remaining = (self.max_epochs - self.first_epoch) * self.iters_per_epoch - done
        eta = (time.time() - self.t_start) / done * remaining
        text = ", ".join(f"{k}: {v:.4f}" for k, v in averaged.items() if k not in ("lr", "grad_norm"))
        self.logger.info(f"epoch {epoch + 1} [{i + 1}/{self.iters_per_epoch}] lr {lr:.3e} {text} eta {format_seconds(eta)}")
        self.logger.log_scalars("train", step=self.global_step, epoch=epoch + 1, values=averaged)

    def save(self, epoch: int) -> None:
        name = f"epoch_{epoch + 1}.pth"
        path = os.path.join(self.run_dir, name)
        if self.info.rank == 0:
            meta = {"epoch": epoch + 1, "iter": self.global_step, "config": dict(self.cfg), "world_size": self.info.world_size}
            save_checkpoint(path, self.model, self.optimizer, self.scheduler, self.stepper, meta=meta)
            update_latest_link(self.run_dir, name)
            self.logger.info(f"saved checkpoint {path}")
        self.last_checkpoint = path
        dist.barrier()

    def evaluate(self, epoch: int) -> None:
        out_dir = os.path.join(self.run_dir, f"eval_epoch_{epoch + 1}")
        render = None if self.eval_render_sample is None else (lambda results: self.log_render(results, epoch))
        self.metrics = evaluate_model(self.model, self.val_dataset, self.cfg, self.info, out_dir=out_dir, on_results=render)
        if self.info.rank == 0 and self.metrics is not None:
            self.logger.info(f"evaluation after epoch {epoch + 1}:\n" + format_detection_metrics(self.metrics))
            scalars = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float))}
            self.logger.log_scalars("val", step=self.global_step, epoch=epoch + 1, values=scalars)


    def log_render(self, results: list[Any], epoch: int) -> None:
        """The BEV render of val sample ``eval_render_sample`` with its prediction, to TensorBoard."""
        index = self.eval_render_sample
        image = eval_bev_image(self.model, self.val_dataset, index, results[index], self.cfg)
        self.logger.log_image("val/bev_render", image, step=self.global_step)
        self.logger.info(f"logged the BEV render of val sample {index} after epoch {epoch + 1} to TensorBoard (val/bev_render)")


def train_model(
    model: nn.Module,
    train_dataset: Any,
    cfg: Mapping[str, Any],
    *,
    resume_from: str | None = None,
    load_from: str | None = None,
    **trainer_args: Any,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg['max_epochs']`` epochs; returns a summary (epochs, steps, last metrics).

    ``trainer_args``: the keyword arguments of ``Trainer`` (``run_dir``, ``info``, ``logger``,
    ``val_dataset``, ``max_iters_per_epoch``, ``debug_rank_dumps``). ``load_from`` loads weights
    only and is ignored when ``resume_from`` is given.
    """
    trainer = Trainer(model, train_dataset, cfg, **trainer_args)
    if load_from and not resume_from:
        trainer.load_weights(load_from)
    if resume_from:
        trainer.resume(resume_from)
    return trainer.run()
