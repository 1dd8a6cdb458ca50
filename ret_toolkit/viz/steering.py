"""Figure of α sweeps (:func:`ret_toolkit.steering.sweep`): target-group share and perplexity vs α."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ret_toolkit.viz.page import figures_html, write_page
from ret_toolkit.viz.style import figure_style, group_color


def sweep_figure(results: Sequence, max_ppl_ratio: float = 1.5) -> go.Figure:
    """Two panels sharing α: share of generated tokens in the target group, and perplexity / perplexity at α = 0.

    One line per sweep, in its target group's colour; the dotted line on the
    right panel is the fluency budget ``max_ppl_ratio``. ``results`` are
    :class:`~ret_toolkit.steering.SweepResult` objects or their ``to_json()`` records.
    """
    results = [r if isinstance(r, dict) else r.to_json() for r in results]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of generated tokens in the target group",
                                                        "perplexity / perplexity at α = 0 (unsteered model)"))
    k = max((r["settings"]["k"] for r in results), default=1)
    for r in results:
        g = r["target_group"]
        pts = r["points"]
        alphas = [p["alpha"] for p in pts]
        base = r["baseline"]["perplexity"] or float("nan")
        color = group_color(g, k)
        fig.add_trace(go.Scatter(x=alphas, y=[p["share"] for p in pts], mode="lines+markers", name=f"group {g}",
                                 legendgroup=str(g), line=dict(color=color),
                                 hovertemplate="α %{x}: share %{y:.3f}<extra>group " + str(g) + "</extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=alphas, y=[p["perplexity"] / base for p in pts], mode="lines+markers",
                                 name=f"group {g}", legendgroup=str(g), showlegend=False, line=dict(color=color),
                                 customdata=[p["perplexity"] for p in pts],
                                 hovertemplate="α %{x}: ×%{y:.2f} (perplexity %{customdata:.2f})<extra>group "
                                               + str(g) + "</extra>"), 1, 2)
    fig.add_hline(y=max_ppl_ratio, line=dict(dash="dot", color="#888"), row=1, col=2)
    fig.update_xaxes(title_text="α")
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    return figure_style(fig, title="Steering toward a macrostate: effect vs fluency", height=420)


def write_sweep_html(path: str | Path, results: Sequence, max_ppl_ratio: float = 1.5) -> Path:
    """One self-contained HTML file with :func:`sweep_figure` (plotly.js inlined)."""
    return write_page(path, "Steering sweep", figures_html([sweep_figure(results, max_ppl_ratio)]))
