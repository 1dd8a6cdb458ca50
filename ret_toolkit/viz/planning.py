"""Figures of the planning analyses: horizon curves, branch awareness, history heatmap; one HTML page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go

from ret_toolkit.viz.page import figures_html, write_page
from ret_toolkit.viz.style import figure_style


def _label(result: dict) -> str:
    if result.get("task") == "pathfinding":
        return f"path-finding ({result.get('path_nodes')} nodes)"
    return str(result.get("task"))


def horizon_figure(results: Sequence[dict]) -> go.Figure:
    """nMI(prefix; token at T+τ-1) vs τ for each result, with bootstrap CIs, the permutation-null level
    and the MI given the tokens at T+τ-1 and T+τ (on the same scale)."""
    fig = go.Figure()
    for r in results:
        curve = r["horizon"]["curve"]
        taus = [c["tau"] for c in curve]
        nmi = [c["nmi"] for c in curve]
        fig.add_trace(go.Scatter(
            x=taus, y=nmi, mode="lines+markers", name=_label(r),
            error_y=dict(type="data", symmetric=False, array=[c["nmi_ci_high"] - c["nmi"] for c in curve],
                         arrayminus=[c["nmi"] - c["nmi_ci_low"] for c in curve])))
        norm = [c["nmi"] / c["mi"] if c["mi"] else 0.0 for c in curve]
        fig.add_trace(go.Scatter(x=taus, y=[c["null_mean"] * k for c, k in zip(curve, norm)], mode="lines",
                                 line=dict(dash="dot"), name=f"{_label(r)}: permutation null"))
        if all("given_tokens" in c for c in curve):  # the same normalisation, so the curves compare
            fig.add_trace(go.Scatter(x=taus, y=[c["given_tokens"]["cmi"] * k for c, k in zip(curve, norm)],
                                     mode="lines+markers", line=dict(dash="dash"),
                                     name=f"{_label(r)}: given the tokens read and predicted"))
    fig.update_layout(xaxis_title="τ (tokens ahead of the anchor)", yaxis_title="nMI (Miller–Madow)")
    return figure_style(fig, title="Planning horizon: prefix code vs the token τ ahead", height=420)


def branch_figure(results: Sequence[dict]) -> go.Figure:
    """Drift-corrected MI(prefix; unused correct path) − MI(prefix; decoy) with its bootstrap CI and paired p."""
    fig = go.Figure()
    rows = [r for r in results if (r.get("branch") or {}).get("paired")]
    vals = [r["branch"]["paired"] for r in rows]
    fig.add_trace(go.Bar(
        x=[_label(r) for r in rows], y=[v["difference"] for v in vals], name="unused − decoy",
        error_y=dict(type="data", symmetric=False, array=[v["ci_high"] - v["difference"] for v in vals],
                     arrayminus=[v["difference"] - v["ci_low"] for v in vals])))
    for r, v in zip(rows, vals):
        ratio = "" if v["ratio"] is None else f", ratio {v['ratio']:.2f}"
        fig.add_annotation(x=_label(r), y=v["ci_high"], yshift=14, showarrow=False,
                           text=f"paired p {v['p_value']:.3g} (n={v['n']}){ratio}")
    fig.add_hline(y=0, line=dict(dash="dot"))
    fig.update_layout(yaxis_title="MI difference, drift-corrected (bits)")
    return figure_style(fig, title="Branch awareness: unused correct path vs decoy", height=400)


def history_figure(result: dict) -> go.Figure:
    """Heatmap of MI(decision code; earlier block code) by layer group and block."""
    h = result["history"]
    groups = h["groups"]
    blocks = sorted({c["block"] for c in h["cells"]})
    z = [[next(c["mi"] for c in h["cells"] if c["layers"] == g and c["block"] == j) for j in blocks] for g in groups]
    cols = [next(f"[{c['positions'][0]}, {c['positions'][1]})" for c in h["cells"] if c["block"] == j) for j in blocks]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=[f"layers {g}" for g in groups], colorscale="Viridis",
                               colorbar=dict(title="bits"), hovertemplate="%{y}, positions %{x}: %{z:.3f} bits<extra></extra>"))
    fig.update_layout(xaxis_title="earlier block (positions relative to T)")
    return figure_style(fig, title=f"History: {_label(result)}", height=300)


def write_planning_report(path: str | Path, results: Sequence[dict]) -> Path:
    """One self-contained HTML page with every figure of ``results``."""
    figs = [horizon_figure(results)]
    if any("branch" in r for r in results):
        figs.append(branch_figure(results))
    figs += [history_figure(r) for r in results]
    acc = "".join(f"<li>{html.escape(_label(r))}: accuracy {r['accuracy']['accuracy']:.3f} "
                  f"(n = {r['accuracy']['n']})</li>" for r in results)
    return write_page(path, "Planning analyses", f"<ul>{acc}</ul>{figures_html(figs)}")
