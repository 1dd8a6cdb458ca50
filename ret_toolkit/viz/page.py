"""The HTML page shell shared by every viz page (report, planning, forecast, steering sweep)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
import plotly.io as pio

from activation_cache.outputs import write_text
from ret_toolkit.viz.style import FONT_FAMILY

#: The look every page shares; a page adds its own rules with ``css=``.
PAGE_CSS = f"""
body {{ font-family: {FONT_FAMILY}; color: #222; background: #f6f7f9; margin: 0; }}
.wrap {{ max-width: 1240px; margin: 0 auto; padding: 18px 28px 60px 28px; background: white;
        box-shadow: 0 0 6px rgba(0,0,0,0.06); }}
h1 {{ font-size: 26px; margin: 8px 0 2px 0; }}
h2 {{ font-size: 20px; margin: 34px 0 10px 0; padding-bottom: 4px; border-bottom: 2px solid #e6e6e6; }}
h3 {{ font-size: 15px; margin: 18px 0 6px 0; }}
.sub {{ color: #666; font-size: 13px; margin-bottom: 10px; }}
.note {{ font-size: 13px; color: #555; margin: 6px 0; }}
table.plain {{ border-collapse: collapse; font-size: 13px; }}
table.plain td, table.plain th {{ border: 1px solid #e3e3e3; padding: 3px 8px; text-align: right; }}
table.plain td:first-child, table.plain th:first-child {{ text-align: left; }}
footer {{ margin-top: 40px; font-size: 12px; color: #888; }}
"""


def figures_html(figs: Sequence[go.Figure]) -> str:
    """The figures as HTML divs, plotly.js inlined once (in the first)."""
    return "".join(pio.to_html(f, full_html=False, include_plotlyjs="inline" if i == 0 else False)
                   for i, f in enumerate(figs))


def render_page(title: str, body: str, *, css: str = "", subtitle: str | None = None) -> str:
    """One self-contained HTML page: ``title`` as heading, an optional subtitle line, then ``body`` (raw HTML)."""
    t = html.escape(title)
    sub = f'<div class="sub">{html.escape(subtitle)}</div>' if subtitle else ""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{t}</title>",
        f"<style>{PAGE_CSS}{css}</style>",
        '</head><body><div class="wrap">',
        f"<h1>{t}</h1>{sub}",
        body,
        "</div></body></html>",
    ])


def write_page(path: str | Path, title: str, body: str, **kwargs) -> Path:
    """Write :func:`render_page` to ``path`` atomically; ``kwargs`` go to it."""
    return write_text(path, render_page(title, body, **kwargs))
