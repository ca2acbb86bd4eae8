"""``index.html``: one table row per rendered sample, linking the renders that exist.

Paths are relative to the out dir, so the folder can be moved or served as it is. Every image
records whether it loaded (``data-loaded`` / ``data-broken``, set by its ``onload`` /
``onerror``), which a headless browser can read back from the DOM.
"""
from __future__ import annotations

import html
import os
from typing import Mapping, Sequence

__all__ = ["RENDER_KINDS", "write_index"]

RENDER_KINDS = ("bev", "camera", "distill")  # sub-folders of the out dir, one PNG per sample token

_STYLE = """body { font-family: sans-serif; background: #15151b; color: #e6e6e6; margin: 16px; }
table { border-collapse: collapse; } td, th { border: 1px solid #444; padding: 4px 8px; vertical-align: top; }
th { background: #25252e; } img { display: block; max-height: 240px; } img[data-broken] { outline: 3px solid red; }
code { font-size: 12px; }"""


def _cell(value) -> str:
    return "&ndash;" if value is None else html.escape(str(value))


def write_index(out_dir: str, entries: Sequence[Mapping], title: str = "renders", notes: Sequence[str] = ()) -> str:
    """Write ``out_dir/index.html`` for ``entries`` (dicts with ``token`` and optional ``gt``,
    ``pred``, ``matched`` counts, in display order) and return its path. The renders
    ``<kind>/<token>.png`` of ``RENDER_KINDS`` are linked where the file exists."""
    rows = []
    for entry in entries:
        token = str(entry["token"])
        cells = [f"<td><code>{html.escape(token)}</code></td>"]
        cells += [f"<td>{_cell(entry.get(key))}</td>" for key in ("gt", "pred", "matched")]
        for kind in RENDER_KINDS:
            relative = f"{kind}/{token}.png"
            if os.path.isfile(os.path.join(out_dir, relative)):
                src = html.escape(relative, quote=True)
                cells.append(f'<td><a href="{src}"><img src="{src}" alt="{kind} {html.escape(token)}" '
                             'onload="this.dataset.loaded=1" onerror="this.dataset.broken=1"></a></td>')
            else:
                cells.append("<td></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{name}</th>" for name in ("sample token", "GT boxes", "predicted boxes", "matched (2 m)", *RENDER_KINDS))
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>{note_html}\n"
            f"<table><thead><tr>{header}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></body></html>\n")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
