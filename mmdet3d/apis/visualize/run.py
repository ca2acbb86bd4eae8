"""Rendering samples of a dataset to an out dir (``tools/visualize.py``), one share per rank.

``load_visualization_model`` builds what runs: nothing in GT mode, the plain model (or a
distiller's student) from ``--checkpoint``, or with a distillation config the whole distiller (its
teacher from ``model.teacher_checkpoint``) so the distillation maps can be drawn.
``SampleRenderer.render`` writes ``bev/<token>.png``, ``camera/<token>.png`` and, for a
distiller, ``distill/<token>.png``; ``visualize`` renders every rank's share of the samples
with a progress bar, gathers the per-sample records and writes ``index.html`` on rank 0.
``eval_bev_image`` is the BEV render of one sample from a prediction made during evaluation
(logged to TensorBoard by the training loop).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mmdet3d.apis.data import to_device
from mmdet3d.apis.runner import build_model_from_config
from mmdet3d.core.visualize import write_index
from mmdet3d.utils import distributed as dist
from mmdet3d.utils.checkpoint import load_checkpoint_file, load_inference_weights, load_model_weights, unwrap_model

from .distill import add_teacher_points, compute_distill_maps, render_distill
from .render import Prediction, render_bev, render_cameras, sample_counts
from .sample import config_bev_range, model_bev_range, points_load_dim, read_sample, sample_batch

__all__ = ["MODES", "is_distiller_config", "load_visualization_model", "SampleRenderer", "visualize", "eval_bev_image"]

MODES = ("gt", "pred", "both")


def is_distiller_config(cfg: Mapping[str, Any]) -> bool:
    """Whether the config's model is a registered distiller (``BEVDistiller``)."""
    from mmdet3d.models.builder import DISTILLERS

    model = cfg.get("model")
    return isinstance(model, Mapping) and model.get("type") in DISTILLERS


def load_visualization_model(cfg: Mapping[str, Any], checkpoint: str, distill: bool = True,
                             log=print) -> tuple[torch.nn.Module, bool]:
    """-> (model in eval mode, whether it is a distiller whose maps are drawn). A distillation
    config with ``distill`` builds the distiller (teacher from ``model.teacher_checkpoint``) and loads
    ``checkpoint`` strictly into it; otherwise the inference model (a distiller's student) loads it."""
    if distill and is_distiller_config(cfg):
        model = build_model_from_config(cfg)
        load_model_weights(model, load_checkpoint_file(checkpoint)["state_dict"], strict=True, source=f"checkpoint {checkpoint}")
        return model.eval(), True
    model = build_model_from_config(cfg, inference=True)
    load_inference_weights(model, checkpoint, log=log)
    return model.eval(), False


class SampleRenderer:
    """Renders samples of ``dataset`` with ``model`` (None: GT only) into ``out_dir``."""

    def __init__(self, cfg: Mapping[str, Any], dataset: Any, out_dir: str, mode: str = "gt", model: torch.nn.Module | None = None,
                 distiller: bool = False, score_thr: float = 0.3, device: torch.device | str = "cpu"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "gt" and model is None:
            raise ValueError(f"mode {mode!r} draws predictions: it needs a model (a checkpoint)")
        self.cfg, self.dataset, self.out_dir, self.mode = cfg, dataset, out_dir, mode
        self.model, self.distiller, self.score_thr, self.device = model, distiller, float(score_thr), torch.device(device)
        self.bev_range = model_bev_range(model) if model is not None else config_bev_range(cfg)
        self.load_dim = points_load_dim(cfg)
        student = getattr(model, "student", model) if model is not None else None
        self.model_reads_points = None if student is None else bool(getattr(student, "reads_points", False))
        self.class_names = list(getattr(dataset, "object_classes", []))
        for kind in ("bev", "camera") + (("distill",) if distiller else ()):
            os.makedirs(os.path.join(out_dir, kind), exist_ok=True)

    @torch.no_grad()
    def _run(self, index: int, display_points: np.ndarray | None, camera: int) -> tuple[dict | None, Any]:
        needs_output = self.mode != "gt"
        if self.model is None or not (needs_output or self.distiller):
            return None, None
        batch = to_device(sample_batch(self.dataset, index), self.device)
        if not self.distiller:
            return self.model(batch)[0], None
        if self.model.teacher.reads_points:
            batch = to_device(add_teacher_points(batch, self.cfg, self.dataset, index), self.device)
        maps = compute_distill_maps(self.model, batch, display_points, camera)
        return maps.output, maps

    def render(self, index: int) -> dict[str, Any]:
        """Write the renders of sample ``index``; -> ``{"index", "token", "gt", "pred", "matched"}``."""
        sample = read_sample(self.dataset, index, self.model_reads_points, self.load_dim)
        camera = sample.camera_names.index("CAM_FRONT") if "CAM_FRONT" in sample.camera_names else 0
        output, maps = self._run(index, sample.points, camera)
        prediction = Prediction.from_output(output, self.score_thr) if output is not None and self.mode != "gt" else None
        show_gt = self.mode != "pred"
        images = {"bev": render_bev(sample, self.bev_range, self.class_names, show_gt, prediction),
                  "camera": render_cameras(sample, show_gt, prediction)}
        if maps is not None:
            images["distill"] = render_distill(maps, sample, self.bev_range)
        for kind, image in images.items():
            image.save(os.path.join(self.out_dir, kind, f"{sample.token}.png"))
        return {"index": index, "token": sample.token, **sample_counts(sample, prediction)}


def visualize(renderer: SampleRenderer, indices: Sequence[int], title: str = "renders") -> list[dict[str, Any]]:
    """Render this rank's share of ``indices`` (every ``world_size``-th), gather every rank's records
    and write ``index.html`` on rank 0 (in the order of ``indices``). Returns all records."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    share = list(indices)[rank::world_size]
    records = []
    with tqdm(total=len(share), desc="visualize", unit="sample", disable=not dist.is_main_process(), dynamic_ncols=True) as bar:
        for index in share:
            records.append(renderer.render(index))
            dist.report_progress(f"visualize, {len(records)} of {len(share)} samples")
            bar.update(1)
    gathered = [r for part in dist.all_gather_object(records) for r in part]
    order = {index: i for i, index in enumerate(indices)}
    gathered.sort(key=lambda r: order[r["index"]])
    if rank == 0:
        notes = [f"mode {renderer.mode}, score threshold {renderer.score_thr:g}; matched: predictions within 2 m "
                 "(BEV centre distance) of a GT box of their class, greedy by score as the nuScenes devkit"]
        write_index(renderer.out_dir, gathered, title=title, notes=notes)
    dist.barrier()
    return gathered


def eval_bev_image(model: torch.nn.Module, dataset: Any, index: int, output: Mapping[str, Any], cfg: Mapping[str, Any],
                   score_thr: float = 0.3) -> np.ndarray:
    """(H, W, 3) uint8 BEV render of sample ``index`` with GT and ``output`` (the model's prediction)."""
    student = getattr(unwrap_model(model), "student", unwrap_model(model))
    sample = read_sample(dataset, index, bool(getattr(student, "reads_points", False)), points_load_dim(cfg))
    image = render_bev(sample, model_bev_range(model), list(getattr(dataset, "object_classes", [])), True,
                       Prediction.from_output(output, score_thr))
    return np.asarray(image)
