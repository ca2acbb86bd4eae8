"""Rendering primitives for looking at a detector (``tools/visualize.py``): a metric BEV canvas,
box wireframes projected into cameras with behind-camera clipping, panel layouts, colours and the
HTML index. They take arrays and calibration matrices only; reading samples and running models is
``mmdet3d.apis.visualize``'s job."""
from .bev import BevCanvas, ego_footprint, font
from .camera import (BOX_EDGES, NEAR_PLANE, NUSCENES_LAYOUT, camera_layout, clip_segments_to_depth, clip_segments_to_image,
                     compose_cameras, draw_wireframes, project_box_edges)
from .colors import CLASS_COLORS, class_color, colorize, gradient_bar
from .html import RENDER_KINDS, write_index
from .panels import PANEL_TITLE_HEIGHT, TITLE_HEIGHT, compose_grid, draw_legend, fit, scatter_panel, with_title

__all__ = ["BevCanvas", "ego_footprint", "font", "BOX_EDGES", "NEAR_PLANE", "NUSCENES_LAYOUT", "camera_layout",
           "clip_segments_to_depth", "clip_segments_to_image", "compose_cameras", "draw_wireframes", "project_box_edges",
           "CLASS_COLORS", "class_color", "colorize", "gradient_bar", "RENDER_KINDS", "write_index", "PANEL_TITLE_HEIGHT",
           "TITLE_HEIGHT", "compose_grid", "draw_legend", "fit", "scatter_panel", "with_title"]
