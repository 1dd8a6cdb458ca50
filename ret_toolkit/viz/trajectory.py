"""Token trajectories coloured by macrostate group (colours and labels from :mod:`ret_toolkit.viz.style`).

Inputs are plain Python data (as written by the macrostate/summary code):

* ``traj``: ``{"sequence": int, "prompt_id": str, "tokens": [str],
  "groups": [int], "generated": [bool]}``
* ``summary`` (optional): ``{"k": K, "groups": [{"group": g, "label": str, ...}], ...}``
"""

from __future__ import annotations

import html
from typing import Sequence

import plotly.graph_objects as go

from ret_toolkit.viz.style import (FONT_FAMILY, MONO_FAMILY, UNASSIGNED_COLOR, display_token, figure_style,
                                   group_colors, group_labels, shorten, summary_k, text_color_for)

__all__ = ["trajectory_figure", "trajectory_html"]


def _check_traj(traj: dict) -> tuple[list[str], list[int], list[bool]]:
    tokens = [str(t) for t in traj.get("tokens", [])]
    groups = [int(g) for g in traj.get("groups", [])]
    generated = [bool(x) for x in traj.get("generated", [False] * len(tokens))]
    if len(groups) != len(tokens):
        raise ValueError(
            f"trajectory {traj.get('sequence')!r}: {len(tokens)} tokens but {len(groups)} group ids"
        )
    if len(generated) != len(tokens):
        raise ValueError(
            f"trajectory {traj.get('sequence')!r}: {len(tokens)} tokens but {len(generated)} generated flags"
        )
    return tokens, groups, generated


def _traj_title(traj: dict, n_shown: int, n_total: int) -> str:
    parts = []
    if traj.get("prompt_id") is not None:
        parts.append(f"prompt {traj['prompt_id']}")
    if traj.get("sequence") is not None:
        parts.append(f"sequence {traj['sequence']}")
    head = " · ".join(parts) or "trajectory"
    if n_shown < n_total:
        head += f" (first {n_shown} of {n_total} tokens)"
    else:
        head += f" ({n_total} tokens)"
    return head


def _layout_tokens(displays: Sequence[str], raw: Sequence[str], chars_per_line: int):
    """Greedy wrap: returns (line, x0, width) per token; newline tokens end a line."""
    out = []
    line, x = 0, 0.0
    for disp, tok in zip(displays, raw):
        # SVG text drops leading/trailing spaces, so the chip is sized on the visible part
        w = float(max(len(disp.strip()), 1)) + 1.0  # padding per chip
        if x > 0 and x + w > chars_per_line:
            line += 1
            x = 0.0
        out.append((line, x, w))
        x += w
        if "\n" in tok or "\r" in tok:
            line += 1
            x = 0.0
    return out


def trajectory_figure(
    traj: dict,
    summary: dict | None = None,
    max_tokens: int = 400,
    *,
    chars_per_line: int = 120,
    title: str | None = None,
) -> go.Figure:
    """Plotly view of one text with every token coloured by its group.

    Tokens are laid out as wrapped lines of coloured chips (horizontal bars
    with the token text inside, one trace per group so the legend toggles
    groups). Hovering a chip shows the token, its position, group id and
    label, and whether it was generated or part of the prompt. Generated
    tokens have bold text, a dark outline and a dark marker bar underneath.
    """
    tokens, groups, generated = _check_traj(traj)
    n_total = len(tokens)
    n = n_total if max_tokens is None else min(n_total, int(max_tokens))
    tokens, groups, generated = tokens[:n], groups[:n], generated[:n]
    k = max(summary_k(summary, groups), (max(groups) + 1) if groups else 0)
    colors = group_colors(k)
    labels = group_labels(summary, k)
    displays = [display_token(t) for t in tokens]
    placed = _layout_tokens(displays, tokens, chars_per_line)
    n_lines = (placed[-1][0] + 1) if placed else 1

    fig = go.Figure()
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g if 0 <= g < k else -1, []).append(i)

    chip_h = 0.78
    for g in sorted(by_group, key=lambda v: (v < 0, v)):
        idx = by_group[g]
        color = colors[g] if g >= 0 else UNASSIGNED_COLOR
        label = labels[g] if g >= 0 else "unassigned"
        txt_color = text_color_for(color)
        texts, hovers = [], []
        for i in idx:
            esc = html.escape(displays[i], quote=False)
            texts.append(f"<b>{esc}</b>" if generated[i] else esc)
            hovers.append(
                f"token: {html.escape(repr(tokens[i]), quote=False)}<br>"
                f"position: {i}<br>"
                f"group {g if g >= 0 else '–'}: {html.escape(label, quote=False)}<br>"
                f"{'generated' if generated[i] else 'prompt'}"
            )
        fig.add_trace(
            go.Bar(
                orientation="h",
                name=(f"{g}: {shorten(label, 28)}" if g >= 0 else "unassigned"),
                legendgroup=f"g{g}",
                meta={"kind": "tokens", "group": g},
                y=[placed[i][0] for i in idx],
                base=[placed[i][1] for i in idx],
                x=[placed[i][2] - 0.15 for i in idx],
                width=[chip_h] * len(idx),
                customdata=[[i] for i in idx],
                text=texts,
                hovertext=hovers,
                hovertemplate="%{hovertext}<extra></extra>",
                textposition="inside",
                insidetextanchor="middle",
                textangle=0,
                textfont=dict(family=MONO_FAMILY, size=12, color=txt_color),
                marker=dict(
                    color=color,
                    line=dict(
                        color=["#111111" if generated[i] else "rgba(255,255,255,0)" for i in idx],
                        width=[1.6 if generated[i] else 0 for i in idx],
                    ),
                ),
                cliponaxis=False,
            )
        )

    gen_idx = [i for i in range(n) if generated[i]]
    if gen_idx:
        fig.add_trace(
            go.Bar(
                orientation="h",
                name="▁ generated",
                legendgroup="generated",
                meta={"kind": "generated_marker"},
                y=[placed[i][0] + chip_h / 2 + 0.07 for i in gen_idx],
                base=[placed[i][1] for i in gen_idx],
                x=[placed[i][2] - 0.15 for i in gen_idx],
                width=[0.08] * len(gen_idx),
                marker=dict(color="#222222", line=dict(width=0)),
                hoverinfo="skip",
                showlegend=True,
            )
        )

    n_legend = len(by_group) + (1 if gen_idx else 0)
    legend_rows = -(-n_legend // 5)  # horizontal legend below the text, ~5 entries per row
    figure_style(fig, title=title if title is not None else _traj_title(traj, n, n_total))
    fig.update_layout(
        barmode="overlay",
        bargap=0,
        height=int(70 + 24 * n_lines + 24 * legend_rows + 20),
        legend=dict(
            orientation="h",
            x=0,
            xanchor="left",
            y=-0.01,
            yanchor="top",
            font=dict(size=11),
            itemclick="toggle",
            itemdoubleclick="toggleothers",
            entrywidth=0.2,
            entrywidthmode="fraction",
        ),
        hovermode="closest",
    )
    fig.update_xaxes(
        visible=False, range=[-0.5, chars_per_line + 0.5], fixedrange=False, showgrid=False, zeroline=False
    )
    fig.update_yaxes(
        visible=False, range=[n_lines - 0.4, -0.6], showgrid=False, zeroline=False
    )
    return fig


def trajectory_html(
    traj: dict,
    summary: dict | None = None,
    max_tokens: int | None = None,
    *,
    show_legend: bool = True,
) -> str:
    """Lightweight pure-HTML view: one ``<span>`` per token with its group colour.

    Every token is HTML-escaped (special tokens such as ``<|im_start|>`` stay
    visible as text), newlines render as ``↵`` plus a line break, the ``title``
    attribute gives the same information as the plotly hover, generated
    tokens are underlined and bold, and a ▶ marks where generation starts.
    Inline styles only, so the fragment works in notebooks (``IPython.display.HTML``)
    and in the report without extra CSS.
    """
    tokens, groups, generated = _check_traj(traj)
    n_total = len(tokens)
    n = n_total if max_tokens is None else min(n_total, int(max_tokens))
    k = max(summary_k(summary, groups), (max(groups) + 1) if groups else 0)
    colors = group_colors(k)
    labels = group_labels(summary, k)

    parts: list[str] = []
    parts.append(
        '<div class="ret-trajectory" style="font-family:'
        + html.escape(FONT_FAMILY)
        + ';margin:0.5em 0 1.2em 0;">'
    )
    parts.append(
        '<div style="font-size:13px;color:#444;margin-bottom:4px;"><b>'
        + html.escape(_traj_title(traj, n, n_total))
        + "</b></div>"
    )
    parts.append(
        '<div style="font-family:'
        + html.escape(MONO_FAMILY)
        + ";font-size:13px;line-height:1.95;white-space:pre-wrap;word-break:break-word;"
        "border:1px solid #e3e3e3;border-radius:6px;padding:8px 10px;background:#fafafa;\">"
    )
    prev_gen = False
    for i in range(n):
        tok, g, gen = tokens[i], groups[i], generated[i]
        if gen and not prev_gen:
            parts.append(
                '<span title="generation starts here" style="color:#222;font-weight:bold;'
                'padding:0 2px;">▶</span>'
            )
        prev_gen = gen
        in_range = 0 <= g < k
        color = colors[g] if in_range else UNASSIGNED_COLOR
        label = labels[g] if in_range else "unassigned"
        fg = text_color_for(color)
        vis = display_token(tok)
        body = html.escape(vis, quote=False)
        if "\n" in tok or "\r" in tok:
            body += "\n"
        tip = (
            f"#{i} · group {g if in_range else '–'}: {label} · "
            f"{'generated' if gen else 'prompt'} · token {tok!r}"
        )
        # the inset shadow marks token boundaries inside runs of the same group
        style = (
            f"background:{color};color:{fg};border-radius:3px;padding:1px 0;"
            "box-shadow:inset -1px 0 0 rgba(255,255,255,0.55);"
        )
        if gen:
            style += "text-decoration:underline;text-decoration-thickness:2px;font-weight:600;"
        parts.append(
            f'<span data-group="{g}" data-pos="{i}" title="{html.escape(tip, quote=True)}" '
            f'style="{style}">{body}</span>'
        )
    if n < n_total:
        parts.append(f'<span style="color:#888;"> … ({n_total - n} more tokens)</span>')
    parts.append("</div>")

    if show_legend:
        present = sorted({g for g in groups[:n] if 0 <= g < k})
        items = []
        for g in present:
            c = colors[g]
            items.append(
                f'<span style="display:inline-block;margin:2px 10px 2px 0;white-space:nowrap;">'
                f'<span style="display:inline-block;width:12px;height:12px;background:{c};'
                f'border-radius:2px;vertical-align:middle;margin-right:4px;"></span>'
                f"<b>{g}</b> {html.escape(shorten(labels[g], 40))}</span>"
            )
        if any(generated[:n]):
            items.append(
                '<span style="display:inline-block;margin:2px 10px 2px 0;">'
                '<span style="text-decoration:underline;text-decoration-thickness:2px;font-weight:600;">'
                "underlined</span> = generated, ▶ = start of generation</span>"
            )
        parts.append('<div style="font-size:12px;color:#333;margin-top:4px;">' + "".join(items) + "</div>")
    parts.append("</div>")
    return "".join(parts)
