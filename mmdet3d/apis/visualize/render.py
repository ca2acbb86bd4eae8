"""The BEV and camera renders of one sample, with GT and/or predicted boxes.

Sizes (pixels, width x height):

- BEV: ``BEV_SIZE + LEGEND_WIDTH`` x ``TITLE_HEIGHT + BEV_SIZE`` = 1000 x 830 for a square
  point-cloud range: an 800 x 800 map of the range (x right, y up), a 200-pixel legend on the
  right, a 30-pixel title bar.
- Cameras: 3 tiles of ``CAMERA_TILE_WIDTH`` (480) per row, 2 rows for the six nuScenes cameras,
  tiles ``480 * H / W`` high (270 for 16:9 images) under the 30-pixel title bar: 1440 x 570.

GT boxes are drawn 3 pixels wide in BEV (2 in the cameras), predictions 1 pixel wide and labelled
with their score in BEV, both in their class colour.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from mmdet3d.core.bbox import center_distance_matches
from mmdet3d.core.visualize import (BevCanvas, class_color, compose_cameras, draw_legend, draw_wireframes, project_box_edges,
                                    with_title)

from .sample import VisualSample

__all__ = ["BEV_SIZE", "LEGEND_WIDTH", "CAMERA_TILE_WIDTH", "MATCH_DISTANCE", "Prediction", "render_bev", "render_cameras",
           "sample_counts"]

BEV_SIZE = 800
LEGEND_WIDTH = 200
CAMERA_TILE_WIDTH = 480
MATCH_DISTANCE = 2.0  # metres between BEV centres (the devkit's middle threshold)
GT_WIDTH_BEV, PRED_WIDTH_BEV, GT_WIDTH_CAMERA, PRED_WIDTH_CAMERA = 3, 1, 2, 1


@dataclass
class Prediction:
    """A model's boxes for one sample above the score threshold (LiDAR frame, gravity centre)."""

    boxes: np.ndarray  # (K, 9)
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,)

    @classmethod
    def from_output(cls, output: Mapping[str, Any], score_thr: float) -> "Prediction":
        """A model's per-sample output dict (``boxes_3d``, ``scores_3d``, ``labels_3d``)."""
        scores = np.asarray(output["scores_3d"].detach().cpu(), dtype=np.float64).reshape(-1)
        keep = scores >= score_thr
        boxes = np.asarray(output["boxes_3d"].detach().cpu(), dtype=np.float64)
        boxes = boxes.reshape(len(scores), -1) if len(scores) else np.zeros((0, 9))
        labels = np.asarray(output["labels_3d"].detach().cpu(), dtype=np.int64).reshape(-1)
        return cls(boxes[keep], scores[keep], labels[keep])


def sample_counts(sample: VisualSample, prediction: Prediction | None) -> dict[str, int | None]:
    """``{"gt", "pred", "matched"}``: box counts and predictions matched to a GT box of their
    class within ``MATCH_DISTANCE`` (devkit greedy matching); pred/matched None without a model."""
    if prediction is None:
        return {"gt": len(sample.gt_boxes), "pred": None, "matched": None}
    matches = center_distance_matches(sample.gt_boxes, sample.gt_labels, prediction.boxes, prediction.scores,
                                      prediction.labels, MATCH_DISTANCE)
    return {"gt": len(sample.gt_boxes), "pred": len(prediction.boxes), "matched": int((matches >= 0).sum())}


def _title(sample: VisualSample, prediction: Prediction | None, show_gt: bool) -> str:
    counts = sample_counts(sample, prediction)
    parts = [sample.token, f"GT {counts['gt']}" + ("" if show_gt else " (not drawn)")]
    if prediction is not None:
        parts.append(f"pred {counts['pred']}, matched {counts['matched']} (2 m)")
    return "  |  ".join(parts)


def _height_limits(points: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(points[:, 2], [2, 98]) if len(points) else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 0.5))


def render_bev(sample: VisualSample, bev_range: Sequence[float], class_names: Sequence[str], show_gt: bool = True,
               prediction: Prediction | None = None, size: int = BEV_SIZE) -> Image.Image:
    """Top-down render: height-coloured LiDAR points, metric grid, ego, GT and predicted boxes, legend."""
    canvas = BevCanvas(bev_range, size)
    canvas.draw_grid()
    bar = None
    if sample.points is not None:
        lo, hi = _height_limits(sample.points)
        canvas.draw_points(sample.points[:, :3], lo, hi)
        bar = ("point height z (m)", lo, hi)
    canvas.draw_ego(sample.lidar2ego)
    if show_gt:
        canvas.draw_boxes(sample.gt_boxes, [class_color(c) for c in sample.gt_labels], width=GT_WIDTH_BEV)
    if prediction is not None:
        canvas.draw_boxes(prediction.boxes, [class_color(c) for c in prediction.labels], width=PRED_WIDTH_BEV,
                          labels=[f"{s:.2f}" for s in prediction.scores])
    image = Image.new("RGB", (canvas.width + LEGEND_WIDTH, canvas.height), (18, 18, 24))
    image.paste(canvas.image, (0, 0))
    notes = (["GT: thick outline"] if show_gt else []) + (["prediction: thin, score"] if prediction is not None else [])
    notes += ["tick: heading (front)", "grey: ego vehicle"]
    draw_legend(image, (canvas.width + 12, 12), [(name, class_color(i)) for i, name in enumerate(class_names)], notes, bar)
    return with_title(image, f"{_title(sample, prediction, show_gt)}  |  {sample.points_note}")


def render_cameras(sample: VisualSample, show_gt: bool = True, prediction: Prediction | None = None,
                   tile_width: int = CAMERA_TILE_WIDTH) -> Image.Image:
    """The camera images in the nuScenes layout, each with the projected, clipped box wireframes."""
    tiles, tile_size = {}, None
    for name, path, lidar2image in zip(sample.camera_names, sample.image_paths, sample.lidar2image):
        with Image.open(path) as raw:
            image = raw.convert("RGB")
        if tile_size is None:
            tile_size = (tile_width, max(1, round(tile_width * image.height / image.width)))
        scale = tile_size[0] / image.width
        tile = image.resize(tile_size)
        size = (image.height, image.width)
        if show_gt:
            draw_wireframes(tile, project_box_edges(sample.gt_boxes, lidar2image, size),
                            [class_color(c) for c in sample.gt_labels], GT_WIDTH_CAMERA, scale)
        if prediction is not None:
            draw_wireframes(tile, project_box_edges(prediction.boxes, lidar2image, size),
                            [class_color(c) for c in prediction.labels], PRED_WIDTH_CAMERA, scale)
        tiles[name] = tile
    return with_title(compose_cameras(tiles, tile_size), _title(sample, prediction, show_gt))
