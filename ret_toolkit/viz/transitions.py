"""Group-transition figures: heatmap of P(next group | group) and a circular graph."""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from ret_toolkit.viz.style import figure_style, group_colors, group_labels, shorten, summary_k, text_color_for

__all__ = ["transition_heatmap", "transition_graph", "transition_matrix"]


def transition_matrix(summary: dict) -> list[list[float]]:
    """The K x K row-normalised matrix from ``summary["transitions"]`` (validated).

    Falls back to normalising ``summary["transition_counts"]`` when only counts exist.
    """
    k = summary_k(summary)
    mat = summary.get("transitions")
    if mat is None:
        counts = summary.get("transition_counts")
        if counts is None:
            raise ValueError("summary has neither 'transitions' nor 'transition_counts'")
        mat = []
        for row in counts:
            s = float(sum(row))
            mat.append([float(c) / s if s > 0 else 0.0 for c in row])
    mat = [[float(v) for v in row] for row in mat]
    if len(mat) != k or any(len(row) != k for row in mat):
        raise ValueError(
            f"transition matrix must be {k}x{k} (summary k={k}); got "
            f"{len(mat)}x{len(mat[0]) if mat else 0}"
        )
    return mat


def _axis_labels(summary: dict, k: int, max_len: int = 18) -> list[str]:
    labels = group_labels(summary, k, max_len=max_len)
    # the id prefix keeps categories unique even when labels repeat
    return [f"{g}: {labels[g]}" for g in range(k)]


def transition_heatmap(summary: dict, *, title: str = "Group transitions P(next | current)") -> go.Figure:
    """Heatmap of the transition matrix: rows = current group, columns = next group.

    Cells are annotated with the probability; hover adds the raw count when
    ``summary["transition_counts"]`` is present. Axis tick labels are coloured
    with the group colours.
    """
    k = summary_k(summary)
    mat = transition_matrix(summary)
    counts = summary.get("transition_counts")
    full = group_labels(summary, k)
    ticks = _axis_labels(summary, k)
    colors = group_colors(k)
    custom = []
    for i in range(k):
        row = []
        for j in range(k):
            c = counts[i][j] if counts is not None else None
            row.append(
                [
                    html.escape(f"{i}: {shorten(full[i], 60)}", quote=False),
                    html.escape(f"{j}: {shorten(full[j], 60)}", quote=False),
                    "n/a" if c is None else str(int(c)),
                ]
            )
        custom.append(row)
    fig = go.Figure(
        go.Heatmap(
            z=mat,
            x=list(range(k)),
            y=list(range(k)),
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            colorbar=dict(title=dict(text="P"), thickness=12),
            texttemplate="%{z:.2f}" if k <= 16 else "",
            textfont=dict(size=11 if k <= 10 else 9),
            customdata=custom,
            hovertemplate=(
                "current %{customdata[0]}<br>next %{customdata[1]}<br>"
                "P = %{z:.3f}<br>count = %{customdata[2]}<extra></extra>"
            ),
            xgap=1,
            ygap=1,
        )
    )
    tick_text_x = [
        f'<span style="color:{colors[g]}">■</span> {html.escape(ticks[g], quote=False)}' for g in range(k)
    ]
    figure_style(fig, title=title, height=int(min(1000, max(380, 170 + 30 * k))))
    fig.update_layout(margin=dict(l=10, r=10, t=60, b=10))
    fig.update_xaxes(
        title=dict(text="next group"),
        tickmode="array",
        tickvals=list(range(k)),
        ticktext=tick_text_x,
        tickangle=-40,
        side="bottom",
        showgrid=False,
    )
    fig.update_yaxes(
        title=dict(text="current group"),
        tickmode="array",
        tickvals=list(range(k)),
        ticktext=tick_text_x,
        autorange="reversed",
        showgrid=False,
    )
    return fig


def transition_graph(
    summary: dict,
    min_prob: float = 0.1,
    *,
    title: str | None = None,
) -> go.Figure:
    """Directed graph of group transitions.

    Nodes are the groups placed on a circle (area proportional to the token
    share, group colours), edges are transitions ``i -> j`` (``i != j``) with
    ``P(j | i) >= min_prob``, drawn as arrows whose width and opacity grow
    with the probability. Opposite edges are offset so both stay visible.
    Hovering a node shows its label, share and self-transition probability;
    hovering an edge midpoint shows the probability.
    """
    k = summary_k(summary)
    mat = transition_matrix(summary)
    colors = group_colors(k)
    labels = group_labels(summary, k)
    shares = [0.0] * k
    for entry in summary.get("groups", []):
        g = int(entry.get("group", -1))
        if 0 <= g < k:
            shares[g] = float(entry.get("share", 0.0) or 0.0)
    max_share = max(shares) if any(shares) else 1.0

    pos = []
    for g in range(k):
        a = math.pi / 2 - 2 * math.pi * g / max(k, 1)
        pos.append((math.cos(a), math.sin(a)))

    # marker diameter in px; convert to data units for arrow shortening
    sizes = [18 + 42 * math.sqrt(s / max_share) if max_share > 0 else 24 for s in shares]
    height = 640
    px_per_unit = (height - 120) / 2.9  # approx (axis range ~2.9 units)

    fig = go.Figure()
    annotations = []
    mid_x, mid_y, mid_text = [], [], []
    n_edges = 0
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            p = mat[i][j]
            if not (p >= min_prob) or math.isnan(p):  # also skips NaN rows of empty groups
                continue
            n_edges += 1
            (x0, y0), (x1, y1) = pos[i], pos[j]
            dx, dy = x1 - x0, y1 - y0
            dist = math.hypot(dx, dy) or 1.0
            ux, uy = dx / dist, dy / dist
            # perpendicular offset so i->j and j->i do not overlap
            ox, oy = -uy * 0.035, ux * 0.035
            r0 = sizes[i] / 2 / px_per_unit + 0.02
            r1 = sizes[j] / 2 / px_per_unit + 0.04
            sx, sy = x0 + ux * r0 + ox, y0 + uy * r0 + oy
            ex, ey = x1 - ux * r1 + ox, y1 - uy * r1 + oy
            annotations.append(
                dict(
                    x=ex, y=ey, ax=sx, ay=sy,
                    xref="x", yref="y", axref="x", ayref="y",
                    text="", showarrow=True,
                    arrowhead=2, arrowsize=1.0,
                    arrowwidth=1.0 + 7.0 * p,
                    arrowcolor=colors[i],
                    opacity=min(1.0, 0.35 + 0.65 * p),
                )
            )
            mid_x.append((sx + ex) / 2)
            mid_y.append((sy + ey) / 2)
            mid_text.append(
                html.escape(
                    f"{i} → {j}: P = {p:.3f}\n{shorten(labels[i], 40)} → {shorten(labels[j], 40)}",
                    quote=False,
                ).replace("\n", "<br>")
            )

    if mid_x:
        fig.add_trace(
            go.Scatter(
                x=mid_x, y=mid_y, mode="markers",
                marker=dict(size=10, color="rgba(0,0,0,0)"),
                hovertext=mid_text,
                hovertemplate="%{hovertext}<extra></extra>",
                showlegend=False,
                name="edges",
                meta={"kind": "edges"},
            )
        )

    node_hover = [
        html.escape(
            f"group {g}: {shorten(labels[g], 60)}\nshare = {shares[g]:.3f}\nP(stay) = {mat[g][g]:.3f}",
            quote=False,
        ).replace("\n", "<br>")
        for g in range(k)
    ]
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in pos],
            y=[p[1] for p in pos],
            mode="markers+text",
            marker=dict(size=sizes, color=colors, line=dict(color="#333", width=1), opacity=1.0),
            text=[str(g) for g in range(k)],
            textfont=dict(color=[text_color_for(c) for c in colors], size=12),
            textposition="middle center",
            hovertext=node_hover,
            hovertemplate="%{hovertext}<extra></extra>",
            showlegend=False,
            name="groups",
            meta={"kind": "nodes"},
        )
    )
    # outer labels
    for g in range(k):
        x, y = pos[g]
        annotations.append(
            dict(
                x=x * 1.2, y=y * 1.2, xref="x", yref="y",
                text=html.escape(shorten(labels[g], 22), quote=False),
                showarrow=False,
                font=dict(size=11, color="#333"),
                xanchor="center" if abs(x) < 0.3 else ("left" if x > 0 else "right"),
                yanchor="middle",
            )
        )
    if title is None:
        title = f"Group transitions (edges with P ≥ {min_prob:g}, self-loops omitted; {n_edges} edges)"
    figure_style(fig, title=title, height=height)
    fig.update_layout(annotations=annotations, hovermode="closest")
    fig.update_xaxes(visible=False, range=[-1.75, 1.75])
    fig.update_yaxes(visible=False, range=[-1.45, 1.45], scaleanchor="x")
    return fig
