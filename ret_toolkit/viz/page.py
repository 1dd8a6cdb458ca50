"""The HTML page shell shared by the viz pages (planning, forecast, steering sweep)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
import plotly.io as pio

from activation_cache.outputs import write_text


def figures_html(figs: Sequence[go.Figure]) -> str:
    """The figures as HTML divs, plotly.js inlined once (in the first)."""
    return "".join(pio.to_html(f, full_html=False, include_plotlyjs="inline" if i == 0 else False)
                   for i, f in enumerate(figs))


def write_page(path: str | Path, title: str, body: str) -> Path:
    """Write one self-contained HTML page (atomically) with ``title`` as heading and ``body`` (raw HTML)."""
    t = html.escape(title)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{t}</title></head>"
            f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'><h1>{t}</h1>"
            f"{body}</body></html>")
    return write_text(path, page)
