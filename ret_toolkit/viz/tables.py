"""Evaluation and group tables as plotly ``go.Table`` figures."""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go

from ret_toolkit.viz.style import figure_style, group_colors, group_labels, shorten, summary_k, text_color_for

__all__ = [
    "METHOD_ORDER",
    "METHOD_NAMES",
    "METRIC_COLUMNS",
    "MISSING",
    "metrics_rows",
    "metrics_table",
    "group_table",
    "fmt_number",
]

MISSING = "—"
METHOD_ORDER = ("ret", "kmeans_raw", "kmeans_pca", "kmeans_window", "ema")
METHOD_NAMES = {
    "ret": "RET (ours)",
    "kmeans_raw": "k-means raw h",
    "kmeans_pca": "k-means PCA(h)",
    "kmeans_window": "k-means window mean",
    "ema": "k-means EMA(h) (slow control)",
}
# (column title, path into metrics, direction for highlighting: +1 higher is better, -1 lower, 0 none)
METRIC_COLUMNS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("P(same next)", ("temporal_consistency", "p_same_next"), +1),
    ("mean run length", ("temporal_consistency", "mean_run_length"), +1),
    ("closure gap", ("closure_gap",), -1),
    ("token MI (bits)", ("token_mi_bits",), -1),
    ("max occupancy", ("group_occupancy_max",), 0),
)


def fmt_number(v: Any, digits: int = 3) -> str:
    """Format a metric value; ``None``/NaN/missing as an em dash."""
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return MISSING if math.isnan(v) else str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return str(v)


def _lookup(metrics: dict, path: tuple[str, ...], method: str) -> Any:
    top = metrics.get(path[0])
    if not isinstance(top, dict):
        return None
    val = top.get(method)
    for key in path[1:]:
        if not isinstance(val, dict):
            return None
        val = val.get(key)
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        return val
    return None


def _methods(metrics: dict) -> list[str]:
    seen: list[str] = []
    for _, path, _ in METRIC_COLUMNS:
        top = metrics.get(path[0])
        if isinstance(top, dict):
            for m in top:
                if m not in seen:
                    seen.append(m)
    ordered = [m for m in METHOD_ORDER if m in seen]
    ordered += [m for m in seen if m not in METHOD_ORDER]
    return ordered or list(METHOD_ORDER)


def metrics_rows(metrics: dict | None) -> tuple[list[str], list[str], list[list[Any]]]:
    """(methods, column titles, values[row][col]) with ``None`` for missing values."""
    metrics = metrics or {}
    methods = _methods(metrics)
    cols = [c[0] for c in METRIC_COLUMNS]
    values = [[_lookup(metrics, path, m) for _, path, _ in METRIC_COLUMNS] for m in methods]
    return methods, cols, values


def metrics_table(metrics: dict | None, *, title: str = "Held-out evaluation (same K for all methods)") -> go.Figure:
    """``go.Table`` with one row per method and the main evaluation columns.

    Missing values (e.g. the closure gap of the raw baseline) are shown as "—".
    The best value of each column with a direction (higher P(same next) and
    run length, lower closure gap and token MI) is bold; the RET row is tinted.
    """
    methods, cols, values = metrics_rows(metrics)
    n_rows = len(methods)
    best: list[set[int]] = []
    for c, (_, _, direction) in enumerate(METRIC_COLUMNS):
        vals = [(r, values[r][c]) for r in range(n_rows) if values[r][c] is not None]
        if direction == 0 or len(vals) < 2:
            best.append(set())
            continue
        target = (max if direction > 0 else min)(v for _, v in vals)
        best.append({r for r, v in vals if v == target})

    cells: list[list[str]] = [[html.escape(METHOD_NAMES.get(m, m)) for m in methods]]
    for c in range(len(cols)):
        col = []
        for r in range(n_rows):
            s = fmt_number(values[r][c])
            col.append(f"<b>{s}</b>" if r in best[c] else s)
        cells.append(col)
    row_fill = ["#eef5fc" if m == "ret" else "white" for m in methods]
    header = ["method"] + [
        f"{t} {'↑' if d > 0 else ('↓' if d < 0 else '')}".strip() for t, _, d in METRIC_COLUMNS
    ]
    fig = go.Figure(
        go.Table(
            columnwidth=[1.6] + [1.0] * len(cols),
            header=dict(
                values=[f"<b>{h}</b>" for h in header],
                fill_color="#f0f0f0",
                align=["left"] + ["right"] * len(cols),
                line_color="#d0d0d0",
                font=dict(size=12),
                height=30,
            ),
            cells=dict(
                values=cells,
                fill_color=[row_fill] * (len(cols) + 1),
                align=["left"] + ["right"] * len(cols),
                line_color="#e0e0e0",
                font=dict(size=12),
                height=28,
            ),
        )
    )
    figure_style(fig, title=title, height=50 + 30 + 28 * n_rows + 24)
    return fig


def _top_tokens_text(entry: dict, n: int = 6) -> str:
    items = []
    for t in (entry.get("top_tokens") or [])[:n]:
        tok = html.escape(repr(str(t.get("token", ""))), quote=False)
        lift = t.get("lift")
        items.append(f"{tok} ×{lift:.1f}" if isinstance(lift, (int, float)) else tok)
    return ", ".join(items) if items else MISSING


def group_table(summary: dict, *, title: str = "Macrostate groups", top_n: int = 6) -> go.Figure:
    """``go.Table`` with one row per group: id (in its colour), label, share,
    generated share, mean relative position and the top tokens by lift."""
    k = summary_k(summary)
    colors = group_colors(k)
    labels = group_labels(summary, k)
    entries = {int(e.get("group", -1)): e for e in summary.get("groups", [])}
    rows = [g for g in range(k)]
    col_group, col_label, col_share, col_gen, col_pos, col_ntok, col_top = [], [], [], [], [], [], []
    for g in rows:
        e = entries.get(g, {})
        col_group.append(f"<b>{g}</b>")
        col_label.append(html.escape(shorten(labels[g], 48), quote=False))
        col_share.append(fmt_number(e.get("share")))
        col_gen.append(fmt_number(e.get("generated_share")))
        col_pos.append(fmt_number(e.get("mean_relative_position")))
        col_ntok.append(fmt_number(e.get("n_tokens")))
        col_top.append(_top_tokens_text(e, top_n))
    white = ["white"] * len(rows)
    fig = go.Figure(
        go.Table(
            columnwidth=[0.5, 2.2, 0.8, 0.9, 0.9, 0.9, 4.0],
            header=dict(
                values=[
                    "<b>group</b>", "<b>label</b>", "<b>share</b>", "<b>generated share</b>",
                    "<b>mean position</b>", "<b>tokens</b>", "<b>top tokens (lift)</b>",
                ],
                fill_color="#f0f0f0",
                align=["center", "left", "right", "right", "right", "right", "left"],
                line_color="#d0d0d0",
                font=dict(size=12),
                height=30,
            ),
            cells=dict(
                values=[col_group, col_label, col_share, col_gen, col_pos, col_ntok, col_top],
                fill_color=[[colors[g] for g in rows], white, white, white, white, white, white],
                font=dict(
                    size=12,
                    color=[[text_color_for(colors[g]) for g in rows]] + [["#222"] * len(rows)] * 6,
                ),
                align=["center", "left", "right", "right", "right", "right", "left"],
                line_color="#e0e0e0",
                height=26,
            ),
        )
    )
    figure_style(fig, title=title, height=int(70 + 30 + 30 * len(rows) + 20))
    return fig
