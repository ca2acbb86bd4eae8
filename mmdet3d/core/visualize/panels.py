"""Layout pieces shared by the renders: title bars, titled panels in a grid, a legend, a scatter plot."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .bev import font
from .colors import BACKGROUND, GRID, TEXT, gradient_bar

__all__ = ["TITLE_HEIGHT", "PANEL_TITLE_HEIGHT", "with_title", "compose_grid", "fit", "draw_legend", "scatter_panel"]

TITLE_HEIGHT = 30  # pixels of the title bar above a render
PANEL_TITLE_HEIGHT = 22  # pixels of the caption above each panel of a grid


def with_title(image: Image.Image, title: str, height: int = TITLE_HEIGHT, size: int = 14) -> Image.Image:
    """``image`` below a dark bar of ``height`` pixels holding ``title`` (cut to the width)."""
    out = Image.new("RGB", (image.width, image.height + height), BACKGROUND)
    out.paste(image, (0, height))
    text_font = font(size)
    draw = ImageDraw.Draw(out)
    while len(title) > 1 and draw.textlength(title, font=text_font) > image.width - 8:
        title = title[:-2] + "…"  # one character shorter, ending in an ellipsis
    draw.text((4, (height - size) // 2 - 1), title, fill=TEXT, font=text_font)
    return out


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` scaled to fit ``size = (W, H)`` keeping its aspect, centred on a dark background."""
    width, height = size
    scale = min(width / image.width, height / image.height)
    scaled = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST)
    out = Image.new("RGB", size, BACKGROUND)
    out.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return out


def compose_grid(panels: Sequence[tuple[str, Image.Image]], columns: int, panel_size: tuple[int, int]) -> Image.Image:
    """``(caption, image)`` panels, each fitted into ``panel_size`` under a caption of
    ``PANEL_TITLE_HEIGHT`` pixels, in rows of ``columns``: ``columns * W`` x ``rows * (H + 22)``."""
    width, height = panel_size
    cell_h = height + PANEL_TITLE_HEIGHT
    rows = max(1, -(-len(panels) // columns))
    out = Image.new("RGB", (columns * width, rows * cell_h), BACKGROUND)
    for i, (caption, image) in enumerate(panels):
        row, col = divmod(i, columns)
        out.paste(with_title(fit(image, panel_size), caption, PANEL_TITLE_HEIGHT, 12), (col * width, row * cell_h))
    return out


def draw_legend(image: Image.Image, origin: tuple[int, int], entries: Sequence[tuple[str, tuple[int, int, int]]],
                notes: Sequence[str] = (), bar: tuple[str, float, float] | None = None) -> None:
    """In place: a colour swatch and name per entry from ``origin`` down, then ``notes`` lines and
    an optional colour bar ``(label, lo, hi)`` of the rainbow map."""
    draw = ImageDraw.Draw(image)
    x, y = origin
    text_font = font(12)
    for name, color in entries:
        draw.rectangle([x, y + 2, x + 14, y + 12], fill=tuple(color))
        draw.text((x + 20, y), name, fill=TEXT, font=text_font)
        y += 18
    y += 6
    for note in notes:
        draw.text((x, y), note, fill=TEXT, font=text_font)
        y += 16
    if bar is not None:
        label, lo, hi = bar
        y += 8
        draw.text((x, y), label, fill=TEXT, font=text_font)
        strip = Image.fromarray(gradient_bar(150, 10))
        image.paste(strip, (x, y + 18))
        draw.text((x, y + 30), f"{lo:.1f}", fill=TEXT, font=text_font)
        draw.text((x + 150 - 8 * len(f"{hi:.1f}"), y + 30), f"{hi:.1f}", fill=TEXT, font=text_font)


def scatter_panel(x: np.ndarray, y: np.ndarray, limits: tuple[float, float], size: int = 320,
                  x_label: str = "x", y_label: str = "y") -> Image.Image:
    """A square scatter plot of ``y`` against ``x`` over ``limits`` on both axes, with the diagonal
    ``y = x`` and ticks at the limits."""
    lo, hi = (float(v) for v in limits)
    margin = 28
    out = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(out)
    span = size - 2 * margin

    def to_pixel(a, b):
        return margin + (np.asarray(a) - lo) / (hi - lo) * span, size - margin - (np.asarray(b) - lo) / (hi - lo) * span

    draw.rectangle([margin, margin, size - margin, size - margin], outline=GRID)
    draw.line([to_pixel(lo, lo), to_pixel(hi, hi)], fill=GRID, width=1)
    cols, rows = to_pixel(np.clip(x, lo, hi), np.clip(y, lo, hi))
    for col, row in zip(np.atleast_1d(cols), np.atleast_1d(rows)):
        draw.ellipse([col - 1.5, row - 1.5, col + 1.5, row + 1.5], fill=(250, 180, 60))
    small = font(11)
    draw.text((margin, size - margin + 4), f"{lo:g}", fill=TEXT, font=small)
    draw.text((size - margin - 16, size - margin + 4), f"{hi:g}", fill=TEXT, font=small)
    draw.text((size // 2 - 4 * len(x_label), size - 14), x_label, fill=TEXT, font=small)
    draw.text((2, margin - 16), y_label, fill=TEXT, font=small)
    return out
