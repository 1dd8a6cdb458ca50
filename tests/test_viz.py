"""Fast tests of ret_toolkit.viz on synthetic summaries/trajectories/metrics (no model)."""

from __future__ import annotations

import copy
import re

import numpy as np
import plotly.graph_objects as go
import pytest

from ret_toolkit.viz import (
    group_colors,
    group_table,
    metrics_table,
    trajectory_figure,
    trajectory_html,
    transition_graph,
    transition_heatmap,
    write_report,
)
from ret_toolkit.viz.report import SECTION_TITLES, render_report
from ret_toolkit.viz.tables import MISSING, metrics_rows

K = 5
LABELS = ["the / a", "<math> & ops", "newline\nstuff", "answer \"quoted\"", "chat <|im_end|>"]

TOKENS_A = ["<|im_start|>", "user", "\n", "What", " is", " 2", " <", " 3", " &", " x", "?", "<|im_end|>", "\n",
            "<|im_start|>", "assistant", "\n", "Yes", ",", " 2", " <", " 3", ".", "<|im_end|>"]
TOKENS_B = ["<|im_start|>", "user", "\n", "Say", " \"hi\"", " & ", "<b>", "bold", "</b>", "\n\n", "<|im_end|>",
            "\t", "hi", " <script>alert(1)</script>", ""]


def _traj(seq, tokens, n_prompt):
    n = len(tokens)
    return {
        "sequence": seq,
        "prompt_id": f"p<{seq}>&",
        "tokens": tokens,
        "groups": [(i * 3 + seq) % K for i in range(n)],
        "generated": [i >= n_prompt for i in range(n)],
    }


@pytest.fixture
def trajectories():
    return [_traj(0, TOKENS_A, 16), _traj(1, TOKENS_B, 11)]


@pytest.fixture
def summary():
    counts = [[(i * 7 + j * 3) % 11 + (20 if i == j else 0) for j in range(K)] for i in range(K)]
    trans = [[c / sum(row) for c in row] for row in counts]
    groups = []
    for g in range(K):
        groups.append(
            {
                "group": g,
                "n_tokens": 100 + 10 * g,
                "share": (100 + 10 * g) / 600,
                "label": LABELS[g],
                "top_tokens": [
                    {"token": "<|im_start|>", "lift": 3.5, "count": 12},
                    {"token": " &amp;", "lift": 2.0, "count": 5},
                    {"token": "\n", "lift": 1.5, "count": 4},
                ],
                "examples": [
                    {"before": "if a <", "span": " b && c", "after": "> d\n", "sequence": 0, "start": 3},
                    {"before": "<|im_start|>", "span": "user", "after": "\n", "sequence": 1, "start": 1},
                ],
                "mean_relative_position": g / K,
                "generated_share": 0.1 * g,
            }
        )
    return {"k": K, "groups": groups, "transitions": trans, "transition_counts": counts}


@pytest.fixture
def metrics():
    methods = ["ret", "kmeans_raw", "kmeans_pca", "kmeans_window"]
    return {
        "n_train_sequences": 40,
        "n_heldout_sequences": 10,
        "k": K,
        "effective_rank": 9.87,
        "temporal_consistency": {
            m: {"p_same_next": 0.5 + 0.1 * i, "mean_run_length": 2.0 + i} for i, m in enumerate(methods)
        },
        "closure_gap": {"ret": 0.05, "kmeans_pca": 0.2, "kmeans_window": 0.1},
        "token_mi_bits": {m: 1.0 + 0.5 * i for i, m in enumerate(methods)},
        "group_occupancy_max": {m: 0.2 + 0.05 * i for i, m in enumerate(methods)},
        "next_group_accuracy": {m: {"macro": 0.4, "macro_micro": 0.45} for m in methods},
    }


def _token_traces(fig):
    return [t for t in fig.data if (t.meta or {}).get("kind") == "tokens"]


# ---------------------------------------------------------------- colours


def test_group_colors_distinct_and_consistent():
    c32 = group_colors(32)
    assert len(c32) == 32 and len(set(c32)) == 32
    assert group_colors(5) == c32[:5]
    c40 = group_colors(40)
    assert len(set(c40)) == 40 and c40[:32] == c32
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in c40)


# ---------------------------------------------------------------- trajectory figure


def test_trajectory_figure_tokens_and_hover(trajectories, summary):
    traj = trajectories[0]
    fig = trajectory_figure(traj, summary)
    assert isinstance(fig, go.Figure)
    traces = _token_traces(fig)
    assert sum(len(t.x) for t in traces) == len(traj["tokens"])
    positions = sorted(cd[0] for t in traces for cd in t.customdata)
    assert positions == list(range(len(traj["tokens"])))
    colors = group_colors(K)
    for t in traces:
        g = t.meta["group"]
        assert t.marker.color == colors[g]
        for h in t.hovertext:
            assert f"group {g}: " in h
            assert re.sub(r"[<>&\"]", "", LABELS[g].split()[0]) in h or "&lt;" in h
    all_hover = " ".join(h for t in traces for h in t.hovertext)
    # labels escaped in hover (plotly renders entities)
    assert "&lt;math&gt; &amp; ops" in all_hover
    assert "generated" in all_hover and "prompt" in all_hover
    # raw special tokens never reach plotly's pseudo-HTML text
    all_text = " ".join(t for tr in traces for t in tr.text)
    assert "<|im_start|>" not in all_text and "&lt;|im_start|&gt;" in all_text
    # generated tokens are marked: a marker-row trace with one bar per generated token
    gen = [t for t in fig.data if (t.meta or {}).get("kind") == "generated_marker"]
    assert len(gen) == 1 and len(gen[0].x) == sum(traj["generated"])


def test_trajectory_figure_max_tokens_and_no_summary(trajectories):
    long = copy.deepcopy(trajectories[0])
    for key in ("tokens", "groups", "generated"):
        long[key] = long[key] * 30
    fig = trajectory_figure(long, None, max_tokens=100)
    assert sum(len(t.x) for t in _token_traces(fig)) == 100
    assert "first 100 of" in fig.layout.title.text
    hover = " ".join(h for t in _token_traces(fig) for h in t.hovertext)
    assert "group 0: group 0" in hover


def test_trajectory_mismatched_lengths_raise(trajectories):
    bad = dict(trajectories[0], groups=[0, 1])
    with pytest.raises(ValueError, match="group ids"):
        trajectory_figure(bad)
    with pytest.raises(ValueError, match="group ids"):
        trajectory_html(bad)


# ---------------------------------------------------------------- trajectory html


def test_trajectory_html_escaping(trajectories, summary):
    out = trajectory_html(trajectories[1], summary)
    assert "<|im_start|>" not in out and "<|im_end|>" not in out
    assert "&lt;|im_start|&gt;" in out
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "<b>bold" not in out and "&lt;b&gt;" in out
    # one span per token with its group colour
    spans = re.findall(r'<span data-group="(\d+)" data-pos="(\d+)" title="([^"]*)" style="([^"]*)"', out)
    assert len(spans) == len(trajectories[1]["tokens"])
    colors = group_colors(K)
    for g, pos, title, style in spans:
        assert f"background:{colors[int(g)]}" in style
        assert f"group {g}: " in title
    # quotes in labels/tokens cannot break the title attribute
    assert "&quot;" in out
    # newlines become a visible marker plus a real line break; generated tokens underlined
    assert "↵\n" in out
    assert "text-decoration:underline" in out
    assert "generation starts here" in out


# ---------------------------------------------------------------- transitions


def test_transition_heatmap(summary):
    fig = transition_heatmap(summary)
    hm = fig.data[0]
    assert isinstance(hm, go.Heatmap)
    np.testing.assert_allclose(np.asarray(hm.z, dtype=float), np.asarray(summary["transitions"]))
    ticks = list(fig.layout.xaxis.ticktext)
    assert len(ticks) == K and all(f"{g}: " in ticks[g] for g in range(K))
    assert "&lt;math&gt;" in ticks[1]
    # counts in hover data
    assert hm.customdata[0][0][2] == str(summary["transition_counts"][0][0])


def test_transition_heatmap_bad_shape(summary):
    bad = dict(summary, transitions=[[1.0]])
    with pytest.raises(ValueError, match="5x5"):
        transition_heatmap(bad)


def test_transition_graph(summary):
    min_prob = 0.1
    fig = transition_graph(summary, min_prob=min_prob)
    nodes = [t for t in fig.data if (t.meta or {}).get("kind") == "nodes"][0]
    assert len(nodes.x) == K
    assert list(nodes.marker.color) == group_colors(K)
    sizes = list(nodes.marker.size)
    assert sizes == sorted(sizes)  # shares increase with g in the fixture
    expected = sum(
        1 for i in range(K) for j in range(K) if i != j and summary["transitions"][i][j] >= min_prob
    )
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == expected > 0
    widths = {round(a.arrowwidth, 6) for a in arrows}
    assert len(widths) > 1  # width depends on probability
    nan_row = copy.deepcopy(summary)
    nan_row["transitions"][0] = [float("nan")] * K  # an empty group has no outgoing transitions
    n_nan = len([a for a in transition_graph(nan_row, min_prob=0.0).layout.annotations if a.showarrow])
    assert n_nan == (K - 1) * (K - 1)
    fig_all = transition_graph(summary, min_prob=0.0)
    assert len([a for a in fig_all.layout.annotations if a.showarrow]) == K * (K - 1)


# ---------------------------------------------------------------- tables


def test_metrics_table(metrics):
    fig = metrics_table(metrics)
    tab = fig.data[0]
    assert isinstance(tab, go.Table)
    cols = [list(c) for c in tab.cells.values]
    assert len(cols) == 6
    assert cols[0][0].startswith("RET") and len(cols[0]) == 4
    # closure gap of kmeans_raw missing -> em dash
    assert cols[3][1] == MISSING
    assert "0.050" in cols[3][0]
    methods, _, values = metrics_rows(metrics)
    assert methods == ["ret", "kmeans_raw", "kmeans_pca", "kmeans_window"]
    assert values[0][0] == pytest.approx(0.5)


def test_metrics_table_missing(metrics):
    partial = {"k": 5, "temporal_consistency": {"ret": {"p_same_next": 0.7}}}
    cols = [list(c) for c in metrics_table(partial).data[0].cells.values]
    assert cols[0] == ["RET (ours)"]
    assert cols[2] == [MISSING] and cols[3] == [MISSING] and cols[4] == [MISSING]
    empty = metrics_table({}).data[0]
    assert all(v == MISSING for col in list(empty.cells.values)[1:] for v in col)


def test_group_table(summary):
    tab = group_table(summary).data[0]
    cols = [list(c) for c in tab.cells.values]
    assert len(cols[0]) == K
    assert "&lt;math&gt; &amp; ops" in cols[1][1]
    assert "<|im_start|>" not in " ".join(cols[6]) and "&lt;|im_start|&gt;" in cols[6][0]
    fills = list(tab.cells.fill.color[0])
    assert fills == group_colors(K)


# ---------------------------------------------------------------- report


def _plotlyjs_count(text: str) -> int:
    return len(re.findall(r"\* plotly\.js v\d", text))


def test_write_report(tmp_path, metrics, summary, trajectories):
    extra = [("Notes & caveats", "<p id='extra-para'>hello <b>world</b></p>")]
    p = write_report(tmp_path / "sub" / "report.html", metrics, summary, trajectories, title="T <1>", extra_sections=extra)
    assert p.exists()
    text = p.read_text(encoding="utf-8")
    assert _plotlyjs_count(text) == 1
    assert text.count("Plotly.newPlot(") == 5  # metrics, groups, heatmap, graph, 1 trajectory
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing loaded from the network
    for t in SECTION_TITLES.values():
        assert f">{t}</h2>" in text
    assert ">Notes &amp; caveats</h2>" in text
    assert "<p id='extra-para'>hello <b>world</b></p>" in text  # raw html kept
    assert "<title>T &lt;1&gt;</title>" in text
    # group example spans escaped
    assert "if a &lt;" in text and " b &amp;&amp; c" in text
    assert "<script>alert(1)</script>" not in text
    # trajectory spans present for both sequences and escaped
    html_part = text.split('class="ret-trajectory"', 1)[1]
    assert "&lt;|im_start|&gt;" in html_part
    assert text.count('class="ret-trajectory"') == 2
    assert "next_group_accuracy.macro_micro" in text


def test_write_report_minimal(tmp_path, summary):
    p = write_report(tmp_path / "r.html", {"k": 5}, None, None)
    text = p.read_text(encoding="utf-8")
    assert _plotlyjs_count(text) == 1
    assert "No group summary available" in text and "No trajectories available" in text
    # summary without transitions -> note instead of failure
    s = {k: v for k, v in summary.items() if k not in ("transitions", "transition_counts")}
    text = render_report({}, s, [])
    assert "Transitions unavailable" in text
    assert _plotlyjs_count(text) == 1
