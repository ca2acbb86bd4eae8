"""Distillation maps of a ``BEVDistiller`` on one sample: what the student is taught, and where.

The batch is the sample through the config's test pipeline (camera input, no augmentation) plus
the teacher's LiDAR input: the config's ``data.train`` steps that read or filter points (the same
test as ``build_model_from_config``'s: ``Points`` in the step type) run on the raw sample. The
student never reads those points (a distiller's student is camera-only). Depth targets for the
depth panel are the ``DepthTargets`` step at the stride of the student's depth logits.

``distill/<token>.png`` is a grid of 3 panels per row, each ``PANEL_SIZE`` (320 x 320) under a
22-pixel caption, below the 30-pixel title: ``960 x (30 + rows * 342)``, 3 rows (960 x 1056) for
TiG:

1. the teacher's and the student's BEV map (channel norm, each scaled by its 99th percentile) and
   the absolute difference of the two scaled maps; the maps are the first BEV pair the configured
   losses compare (``fused_bev`` if none does);
2. the masks: the Gaussian GT heatmap (the CenterHead targets summed over classes), the LiDAR
   foreground (BEV cells of the map's grid holding a keyframe point), then every mask the
   configured losses expose (``DistillLoss.visual_masks``: TiG's keypoint lattices), three a row;
3. for one camera (CAM_FRONT if present): the LiDAR depth targets, the student's expected depth
   ``sum_b softmax(logits)_b * v_b`` on the same colour scale, and predicted against LiDAR depth
   on the cells with a point (absent without depth logits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from mmdet3d.core.points import bev_occupancy
from mmdet3d.core.visualize import BevCanvas, class_color, colorize, compose_grid, scatter_panel, with_title
from mmdet3d.datasets.example_batches import add_depth_targets
from mmdet3d.datasets.pipelines.compose import Compose
from mmdet3d.models.distillers.bev_distiller import named_tensors

from .sample import VisualSample

__all__ = ["PANEL_SIZE", "DistillMaps", "add_teacher_points", "compute_distill_maps", "render_distill"]

PANEL_SIZE = 320
COLUMNS = 3


@dataclass
class DistillMaps:
    """What ``render_distill`` draws, for the first sample of a batch."""

    pair: tuple[str, str]  # (student tensor, teacher tensor)
    teacher_norm: np.ndarray  # (X, Y)
    student_norm: np.ndarray  # (X, Y)
    masks: list[tuple[str, str, np.ndarray]]  # (caption, "map" (X, Y) in [0, 1] | "points" (P, 2) metres, values)
    output: dict  # the student's prediction for the sample
    depth: dict[str, Any] = field(default_factory=dict)  # camera, image (H, W, 3), lidar / predicted (h, w)


def _points_steps(cfg: Mapping[str, Any]) -> list[dict]:
    section = ((cfg.get("data") or {}).get("train") or {})
    section = section.get("dataset", section) if isinstance(section, Mapping) else {}
    return [dict(step) for step in section.get("pipeline") or [] if isinstance(step, Mapping) and "Points" in str(step.get("type", ""))]


def add_teacher_points(batch: dict, cfg: Mapping[str, Any], dataset: Any, index: int) -> dict:
    """``batch["points"]``: the sample's points as ``data.train``'s point steps load them (raises
    ``ValueError`` naming the config key when it has none)."""
    steps = _points_steps(cfg)
    if not steps:
        raise ValueError("data.train.pipeline has no step that loads points (LoadPointsFromFile): the teacher's "
                         "LiDAR input for the distillation maps cannot be read")
    results = Compose(steps)(dataset.get_data_info(index))
    batch["points"] = [results["points"].float()]
    return batch


def _channel_norm(bev: torch.Tensor) -> np.ndarray:
    return bev[0].float().norm(dim=0).cpu().numpy()  # (B, C, X, Y) -> (X, Y) of sample 0


def _scaled(values: np.ndarray) -> np.ndarray:
    top = float(np.percentile(values, 99))
    return np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)


def _map_pair(distiller: torch.nn.Module, student: dict, teacher: dict) -> tuple[str, str]:
    for loss in distiller.distill_losses:
        s, t = student.get(loss.student), teacher.get(loss.teacher)
        if isinstance(s, torch.Tensor) and isinstance(t, torch.Tensor) and s.dim() == 4 and t.dim() == 4:
            return loss.student, loss.teacher
    return "fused_bev", "fused_bev"


def _gaussian_mask(head: torch.nn.Module, boxes: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    targets = head.get_targets_single(boxes.float(), labels, grid)
    total = sum(heatmap.sum(dim=0) for heatmap, _, _ in targets)
    return total.clamp(max=1.0).cpu().numpy()


@torch.no_grad()
def compute_distill_maps(distiller: torch.nn.Module, batch: dict, display_points: np.ndarray | None,
                         camera: int = 0) -> DistillMaps:
    """Run teacher and student on ``batch`` (B = 1) and collect the maps, masks and depths."""
    distiller.eval()
    features, preds = distiller.student.forward_features(batch)
    output = distiller.student.predict(batch, preds)[0]
    student = named_tensors(features, preds)
    teacher = named_tensors(*distiller.teacher.forward_features(batch))
    pair = _map_pair(distiller, student, teacher)
    grid = tuple(student[pair[0]].shape[-2:])
    context = distiller.context
    head = distiller.student.heads["object"]
    heat_grid = tuple(preds["object"][0]["heatmap"].shape[-2:])
    masks = [("Gaussian GT heatmap (sum over classes)", "map",
              _gaussian_mask(head, batch["gt_bboxes_3d"][0], batch["gt_labels_3d"][0], heat_grid))]
    points = batch["points"][0] if batch.get("points") else (torch.from_numpy(display_points) if display_points is not None else None)
    if points is not None:
        keyframe = points[points[:, 4] == 0] if points.shape[1] > 4 else points
        masks.append(("LiDAR foreground (keyframe occupancy)", "map", bev_occupancy(keyframe, context["bev_range"], grid).numpy()))
    owners: dict[str, list[str]] = {}
    for loss in distiller.distill_losses:
        for caption, value in loss.visual_masks(student, teacher, batch, context).items():
            if caption not in owners:
                owners[caption] = []
                kind = "points" if isinstance(value, (list, tuple)) else "map"
                masks.append((caption, kind, value[0].detach().float().cpu().numpy()))  # sample 0
            owners[caption].append(loss.name)
    masks = [(f"{c} ({', '.join(owners[c])})" if c in owners else c, kind, v) for c, kind, v in masks]
    maps = DistillMaps(pair, _channel_norm(teacher[pair[1]]), _channel_norm(student[pair[0]]), masks, output)
    logits = student.get("depth_logits")
    if isinstance(logits, torch.Tensor):
        downsample = batch["img"].shape[-2] // logits.shape[-2]
        add_depth_targets(batch, downsample, context.get("dbound"))
        bins = context["depth_bins"].to(logits.device)
        expected = (logits.softmax(dim=2) * bins.view(1, 1, -1, 1, 1)).sum(dim=2)  # (B, N, D, h, w) -> (B, N, h, w)
        image = batch["img"][0, camera].permute(1, 2, 0).float().cpu().numpy()  # (3, H, W) -> (H, W, 3)
        lo, hi = image.min(), image.max()
        maps.depth = {"camera": camera, "image": np.uint8(255 * (image - lo) / max(hi - lo, 1e-6)),
                      "lidar": batch["depth_map"][0, camera].cpu().numpy(), "predicted": expected[0, camera].cpu().numpy(),
                      "limits": (float(context["dbound"][0]), float(context["dbound"][1]))}
    return maps


def _heat_panel(values: np.ndarray, bev_range, sample: VisualSample) -> Image.Image:
    canvas = BevCanvas(bev_range, PANEL_SIZE)
    canvas.fill_map(values, 0.0, 1.0)
    canvas.draw_boxes(sample.gt_boxes, [class_color(c) for c in sample.gt_labels], width=1)
    return canvas.image


def _points_panel(xy: np.ndarray, bev_range, sample: VisualSample) -> Image.Image:
    canvas = BevCanvas(bev_range, PANEL_SIZE)
    canvas.draw_grid(labels=False)
    canvas.draw_boxes(sample.gt_boxes, [class_color(c) for c in sample.gt_labels], width=1)
    canvas.draw_dots(xy, (240, 240, 240), radius=0.8)
    return canvas.image


def _depth_image(image: np.ndarray, depth: np.ndarray, limits: tuple[float, float], sparse: bool) -> Image.Image:
    """The camera image (dimmed) with the (h, w) depth cells over it (only the cells with a value if ``sparse``)."""
    stride_v, stride_u = image.shape[0] // depth.shape[0], image.shape[1] // depth.shape[1]
    cells = np.repeat(np.repeat(depth, stride_v, axis=0), stride_u, axis=1)  # (h, w) -> (h*s, w*s)
    out = (image[: cells.shape[0], : cells.shape[1]] * 0.35).astype(np.uint8)
    show = cells > 0 if sparse else np.ones_like(cells, dtype=bool)
    out[show] = colorize(cells[show], *limits)
    return Image.fromarray(out)


def render_distill(maps: DistillMaps, sample: VisualSample, bev_range) -> Image.Image:
    """The distillation panels (module docstring) under a title naming the sample and the maps."""
    student_key, teacher_key = maps.pair
    teacher, student = _scaled(maps.teacher_norm), _scaled(maps.student_norm)
    panels = [(f"teacher {teacher_key} |F| (max {maps.teacher_norm.max():.3g})", _heat_panel(teacher, bev_range, sample)),
              (f"student {student_key} |F| (max {maps.student_norm.max():.3g})", _heat_panel(student, bev_range, sample)),
              ("|teacher - student| (scaled norms)", _heat_panel(np.abs(teacher - student), bev_range, sample))]
    for caption, kind, value in maps.masks:
        panels.append((caption, _points_panel(value, bev_range, sample) if kind == "points" else _heat_panel(value, bev_range, sample)))
    while len(panels) % COLUMNS:
        panels.append(("", Image.new("RGB", (PANEL_SIZE, PANEL_SIZE), (18, 18, 24))))
    if maps.depth:
        depth = maps.depth
        name = sample.camera_names[depth["camera"]]
        lidar, predicted = depth["lidar"], depth["predicted"]
        hit = lidar > 0
        error = float(np.abs(predicted[hit] - lidar[hit]).mean()) if hit.any() else float("nan")
        panels += [(f"{name}: LiDAR depth ({int(hit.sum())} cells)", _depth_image(depth["image"], lidar, depth["limits"], True)),
                   (f"{name}: predicted depth", _depth_image(depth["image"], predicted, depth["limits"], False)),
                   (f"predicted vs LiDAR depth, mean |error| {error:.2f} m",
                    scatter_panel(lidar[hit], predicted[hit], depth["limits"], PANEL_SIZE, "LiDAR depth (m)", "predicted (m)"))]
    grid = compose_grid(panels, COLUMNS, (PANEL_SIZE, PANEL_SIZE))
    return with_title(grid, f"{sample.token}  |  distillation: student {student_key} vs teacher {teacher_key}")
