"""Self-contained HTML report for RET macrostates (plotly.js embedded once, inline)."""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go
import plotly.io as pio

from activation_cache.outputs import write_text
from ret_toolkit.viz.page import render_page
from ret_toolkit.viz.tables import METHOD_NAMES, fmt_number, group_table, metrics_table
from ret_toolkit.viz.style import MONO_FAMILY, group_colors, group_labels, summary_k, text_color_for
from ret_toolkit.viz.trajectory import trajectory_figure, trajectory_html
from ret_toolkit.viz.transitions import transition_graph, transition_heatmap

__all__ = ["write_report", "render_report", "SECTION_TITLES"]

SECTION_TITLES = {
    "overview": "Overview",
    "metrics": "Evaluation metrics",
    "groups": "Macrostate groups",
    "transitions": "Group transitions",
    "trajectories": "Trajectories",
}

_CSS = f"""
nav.toc {{ font-size: 13px; margin: 10px 0 0 0; }}
nav.toc a {{ margin-right: 14px; color: #1f5f9f; text-decoration: none; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }}
.card {{ border: 1px solid #e3e3e3; border-radius: 8px; padding: 8px 14px; min-width: 120px; background: #fcfcfd; }}
.card .v {{ font-size: 20px; font-weight: 600; }}
.card .k {{ font-size: 12px; color: #666; }}
.groups {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(370px, 1fr)); gap: 10px; }}
.group {{ border: 1px solid #e3e3e3; border-radius: 8px; padding: 8px 10px; font-size: 13px; }}
.group .hd {{ display: flex; align-items: center; gap: 8px; margin-bottom: 4px; }}
.group .sw {{ display: inline-block; min-width: 26px; text-align: center; border-radius: 4px; font-weight: 700; padding: 1px 4px; }}
.group .stats {{ color: #666; font-size: 12px; margin-bottom: 4px; }}
.group .tok {{ font-family: {MONO_FAMILY}; background: #f1f1f1; border-radius: 3px; padding: 0 3px; margin-right: 2px; white-space: pre; }}
.ex {{ font-family: {MONO_FAMILY}; font-size: 12px; white-space: pre-wrap; word-break: break-word; color: #555;
      border-left: 3px solid #eee; padding: 1px 6px; margin: 3px 0; }}
.ex .span {{ color: #111; border-radius: 3px; padding: 0 1px; }}
details {{ margin: 8px 0; font-size: 13px; }}
details pre {{ font-family: {MONO_FAMILY}; font-size: 12px; background: #f7f7f7; padding: 8px; overflow-x: auto; }}
.fig {{ margin: 6px 0 14px 0; }}
"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _slug(title: str, used: set[str]) -> str:
    base = "".join(c.lower() if c.isalnum() else "-" for c in title).strip("-") or "section"
    base = "-".join(p for p in base.split("-") if p)
    slug, i = base, 2
    while slug in used:
        slug = f"{base}-{i}"
        i += 1
    used.add(slug)
    return slug


class _FigureEmbedder:
    """Turns figures into HTML divs; only the first one carries plotly.js."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, fig: go.Figure) -> str:
        include = self.n == 0
        self.n += 1
        div = pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=include,
            config={"displaylogo": False, "responsive": True},
            default_width="100%",
        )
        return f'<div class="fig">{div}</div>'


def _overview(metrics: dict, summary: dict | None, trajectories: Sequence[dict]) -> str:
    cards: list[tuple[str, str]] = []
    known = [
        ("n_train_sequences", "train sequences"),
        ("n_heldout_sequences", "held-out sequences"),
        ("k", "groups (K)"),
        ("effective_rank", "effective rank of z"),
    ]
    for key, name in known:
        if key in metrics:
            cards.append((name, fmt_number(metrics.get(key), 2)))
    if summary is not None and "k" not in metrics:
        cards.append(("groups (K)", str(summary_k(summary))))
    if summary is not None and summary.get("groups"):
        n_tok = sum(int(g.get("n_tokens", 0) or 0) for g in summary["groups"])
        if n_tok:
            cards.append(("tokens summarised", f"{n_tok:,}"))
    if trajectories:
        cards.append(("trajectories in report", str(len(trajectories))))
    # other top-level scalar metrics (e.g. thresholds, timings)
    skip = {k for k, _ in known}
    others = [
        (k, v)
        for k, v in metrics.items()
        if k not in skip and (isinstance(v, (int, float, str)) and not isinstance(v, bool))
    ]
    out = ['<div class="cards">']
    for name, val in cards:
        out.append(f'<div class="card"><div class="v">{_esc(val)}</div><div class="k">{_esc(name)}</div></div>')
    out.append("</div>")
    if not cards:
        out.append('<p class="note">No overview numbers available.</p>')
    if others:
        out.append('<table class="plain"><tr><th>metric</th><th>value</th></tr>')
        for k, v in others:
            out.append(f"<tr><td>{_esc(k)}</td><td>{_esc(fmt_number(v))}</td></tr>")
        out.append("</table>")
    return "".join(out)


def _extra_method_metrics(metrics: dict) -> str:
    """Any other {method: number | {name: number}} metrics as a small plain table."""
    handled = {"temporal_consistency", "closure_gap", "token_mi_bits", "group_occupancy_max"}
    methods = set(METHOD_NAMES)
    cols: list[tuple[str, dict[str, Any]]] = []
    for key, val in metrics.items():
        if key in handled or not isinstance(val, dict) or not (set(val) & methods):
            continue
        sub_keys: list[str] = []
        for m, v in val.items():
            if isinstance(v, dict):
                sub_keys += [s for s in v if s not in sub_keys and isinstance(v[s], (int, float))]
        if sub_keys:
            for s in sub_keys:
                cols.append(
                    (f"{key}.{s}", {m: (v.get(s) if isinstance(v, dict) else None) for m, v in val.items()})
                )
        else:
            cols.append((key, {m: v for m, v in val.items() if isinstance(v, (int, float))}))
    if not cols:
        return ""
    rows = [m for m in METHOD_NAMES if any(m in c[1] for c in cols)]
    rows += sorted({m for c in cols for m in c[1]} - set(rows))
    out = ['<h3>Other metrics</h3><table class="plain"><tr><th>method</th>']
    out += [f"<th>{_esc(c[0])}</th>" for c in cols]
    out.append("</tr>")
    for m in rows:
        out.append(f"<tr><td>{_esc(METHOD_NAMES.get(m, m))}</td>")
        for _, d in cols:
            v = d.get(m)
            out.append(f"<td>{_esc(fmt_number(v if isinstance(v, (int, float)) else None))}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _group_cards(summary: dict, n_examples: int = 3, n_tokens: int = 8) -> str:
    k = summary_k(summary)
    colors = group_colors(k)
    labels = group_labels(summary, k)
    entries = sorted(summary.get("groups", []), key=lambda e: int(e.get("group", -1)))
    out = ['<div class="groups">']
    for e in entries:
        g = int(e.get("group", -1))
        c = colors[g] if 0 <= g < k else "#e0e0e0"
        fg = text_color_for(c)
        lab = labels[g] if 0 <= g < k else str(e.get("label", ""))
        out.append('<div class="group">')
        out.append(
            f'<div class="hd"><span class="sw" style="background:{c};color:{fg}">{g}</span>'
            f"<b>{_esc(lab)}</b></div>"
        )
        stats = []
        if e.get("share") is not None:
            stats.append(f"share {fmt_number(e.get('share'))}")
        if e.get("n_tokens") is not None:
            stats.append(f"{fmt_number(e.get('n_tokens'))} tokens")
        if e.get("generated_share") is not None:
            stats.append(f"generated {fmt_number(e.get('generated_share'))}")
        if e.get("mean_relative_position") is not None:
            stats.append(f"mean position {fmt_number(e.get('mean_relative_position'))}")
        out.append(f'<div class="stats">{_esc(" · ".join(stats))}</div>')
        toks = (e.get("top_tokens") or [])[:n_tokens]
        if toks:
            chips = []
            for t in toks:
                lift = t.get("lift")
                tip = f"lift {lift:.2f}" if isinstance(lift, (int, float)) else ""
                if t.get("count") is not None:
                    tip += f", count {t['count']}"
                chips.append(f'<span class="tok" title="{_esc(tip)}">{_esc(repr(str(t.get("token", ""))))}</span>')
            out.append("<div>top tokens: " + " ".join(chips) + "</div>")
        for ex in (e.get("examples") or [])[:n_examples]:
            where = []
            if ex.get("sequence") is not None:
                where.append(f"seq {ex['sequence']}")
            if ex.get("start") is not None:
                where.append(f"@{ex['start']}")
            out.append(
                f'<div class="ex" title="{_esc(" ".join(where))}">…{_esc(ex.get("before", ""))}'
                f'<span class="span" style="background:{c};color:{fg}">{_esc(ex.get("span", ""))}</span>'
                f'{_esc(ex.get("after", ""))}…</div>'
            )
        out.append("</div>")
    out.append("</div>")
    return "".join(out)


def render_report(
    metrics: dict | None,
    summary: dict | None,
    trajectories: Sequence[dict] | None,
    title: str = "RET macrostates",
    extra_sections: list[tuple[str, str]] | None = None,
    *,
    n_trajectories: int = 3,
    max_tokens: int = 400,
    min_prob: float = 0.1,
) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    metrics = dict(metrics or {})
    trajectories = list(trajectories or [])
    embed = _FigureEmbedder()
    used: set[str] = set()
    sections: list[tuple[str, str, str]] = []  # (slug, title, body)

    def add(title_: str, body: str) -> None:
        sections.append((_slug(title_, used), title_, body))

    add(SECTION_TITLES["overview"], _overview(metrics, summary, trajectories))

    body = [embed(metrics_table(metrics))]
    body.append(
        '<p class="note">↑ higher is better, ↓ lower is better; the best value per column is bold. '
        "P(same next) and mean run length measure temporal consistency; the closure gap compares "
        "predicting z<sub>t+k</sub> from z<sub>t</sub> alone vs. with PCA(h<sub>t</sub>) (small = closed "
        "dynamics); token MI is MI(group; token id) in bits (lower = more abstract); max occupancy is the "
        "largest share of held-out tokens in one group. “—” = not computed.</p>"
    )
    body.append(_extra_method_metrics(metrics))
    body.append(
        "<details><summary>raw metrics.json</summary><pre>"
        + _esc(json.dumps(metrics, indent=2, default=str))
        + "</pre></details>"
    )
    add(SECTION_TITLES["metrics"], "".join(body))

    if summary is not None:
        add(SECTION_TITLES["groups"], embed(group_table(summary)) + "<h3>Examples</h3>" + _group_cards(summary))
        tbody = []
        try:
            tbody.append(embed(transition_heatmap(summary)))
            tbody.append(embed(transition_graph(summary, min_prob=min_prob)))
        except ValueError as exc:
            tbody.append(f'<p class="note">Transitions unavailable: {_esc(exc)}</p>')
        add(SECTION_TITLES["transitions"], "".join(tbody))
    else:
        add(SECTION_TITLES["groups"], '<p class="note">No group summary available.</p>')
        add(SECTION_TITLES["transitions"], '<p class="note">No group summary available.</p>')

    tr_body = []
    shown = trajectories[: max(int(n_trajectories), 0)]
    if not shown:
        tr_body.append('<p class="note">No trajectories available.</p>')
    else:
        tr_body.append(
            f'<p class="note">{len(shown)} of {len(trajectories)} trajectories; each token is coloured by its '
            "group (hover a token for details). The first one is also shown as an interactive plotly figure "
            "(click legend entries to hide groups).</p>"
        )
        for i, traj in enumerate(shown):
            tr_body.append(trajectory_html(traj, summary, max_tokens=max_tokens))
            if i == 0:
                tr_body.append(embed(trajectory_figure(traj, summary, max_tokens=max_tokens)))
    add(SECTION_TITLES["trajectories"], "".join(tr_body))

    for sec_title, sec_html in extra_sections or []:
        add(str(sec_title), str(sec_html))

    toc = " ".join(f'<a href="#{slug}">{_esc(t)}</a>' for slug, t, _ in sections)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f'<nav class="toc">{toc}</nav>']
    body += [f'<section id="{slug}"><h2>{_esc(t)}</h2>{b}</section>' for slug, t, b in sections]
    body.append('<footer>Self-contained report: plotly.js is embedded inline; no network access needed.</footer>')
    return render_page(title, "\n".join(body), css=_CSS, subtitle=f"generated {now} by ret_toolkit")


def write_report(
    path: str | Path,
    metrics: dict | None,
    summary: dict | None,
    trajectories: Sequence[dict] | None,
    title: str = "RET macrostates",
    extra_sections: list[tuple[str, str]] | None = None,
    **kwargs: Any,
) -> Path:
    """Write one self-contained HTML report and return its path.

    Sections: overview numbers, metrics table, group table with example spans,
    transition heatmap and graph, a few trajectories (HTML spans, plus the
    plotly view of the first), then ``extra_sections`` as ``(title, raw_html)``.
    plotly.js is embedded once, inline, in the first figure. Optional inputs
    may be missing (``None`` or absent metric keys). Extra keyword arguments go
    to :func:`render_report` (``n_trajectories``, ``max_tokens``, ``min_prob``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, render_report(metrics, summary, trajectories, title=title, extra_sections=extra_sections,
                                          **kwargs))
