"""Rendering samples and model outputs: BEV and camera renders, distillation maps, an HTML index
(``tools/visualize.py``) and the BEV render that training logs at each evaluation. The drawing
primitives are in ``mmdet3d.core.visualize``."""
from .distill import PANEL_SIZE, DistillMaps, add_teacher_points, compute_distill_maps, render_distill
from .render import BEV_SIZE, CAMERA_TILE_WIDTH, LEGEND_WIDTH, MATCH_DISTANCE, Prediction, render_bev, render_cameras, sample_counts
from .run import MODES, SampleRenderer, eval_bev_image, is_distiller_config, load_visualization_model, visualize
from .sample import (VisualizeError, VisualSample, config_bev_range, model_bev_range, points_load_dim, read_sample, sample_batch,
                     select_indices)

__all__ = ["PANEL_SIZE", "DistillMaps", "add_teacher_points", "compute_distill_maps", "render_distill", "BEV_SIZE",
           "CAMERA_TILE_WIDTH", "LEGEND_WIDTH", "MATCH_DISTANCE", "Prediction", "render_bev", "render_cameras", "sample_counts",
           "MODES", "SampleRenderer", "eval_bev_image", "is_distiller_config", "load_visualization_model", "visualize", "VisualizeError",
           "VisualSample", "config_bev_range", "model_bev_range", "points_load_dim", "read_sample", "sample_batch",
           "select_indices"]
