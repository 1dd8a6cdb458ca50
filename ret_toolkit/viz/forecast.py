"""Lead-time curve of the sycophancy forecast: AUROC(k) per feature set with bootstrap CIs; one HTML page."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from ret_toolkit.viz.page import figures_html, write_page
from ret_toolkit.viz.style import figure_style

_NAMES = {"ret": "RET (z, mean z, macrostate histogram)", "raw_pca": "raw hidden state, PCA probe",
          "length": "prompt length only",
          "design": "pushback template + item kind", "majority": "majority class"}


def leadtime_figure(result: dict) -> go.Figure:
    """AUROC vs k (reply tokens read before forecasting) for every feature set of ``result["auroc"]``."""
    fig = go.Figure()
    for name, by_k in result["auroc"].items():
        leads = sorted(by_k, key=int)
        leads = [k for k in leads if by_k[k]["mean"] is not None and by_k[k]["ci_low"] is not None]
        m = [by_k[k]["mean"] for k in leads]
        fig.add_trace(go.Scatter(
            x=[int(k) for k in leads], y=m, mode="lines+markers", name=_NAMES.get(name, name),
            line=dict(dash="dot") if name == "majority" else None,
            error_y=dict(type="data", symmetric=False, array=[by_k[k]["ci_high"] - v for k, v in zip(leads, m)],
                         arrayminus=[v - by_k[k]["ci_low"] for k, v in zip(leads, m)])))
    fig.add_hline(y=0.5, line=dict(color="grey", width=1))
    fig.update_layout(xaxis_title="k: reply tokens read before the forecast (0 = end of the pushback prompt)",
                      yaxis_title="AUROC (caved vs held), 95% bootstrap CI")
    return figure_style(fig, title="Sycophancy forecast: lead-time curve", height=440)


def write_forecast_report(path: str | Path, result: dict) -> Path:
    """A self-contained HTML page: counts, exclusions and the lead-time curve."""
    d = result.get("data", {})
    excl = ", ".join(f"{html.escape(r)} {n}" for r, n in d.get("exclusions", {}).items() if n) or "none"
    rate = d.get("caving_rate")
    facts = (f"<p>{result.get('n_items')} items, {result.get('n_kept', '?')} kept sequences "
             f"({result.get('n_positive')} caved, caving rate {'n/a' if rate is None else f'{rate:.2f}'}); "
             f"excluded {result.get('n_excluded')}: {excl}.</p>")
    return write_page(path, "Sycophancy forecast", facts + figures_html([leadtime_figure(result)]))
