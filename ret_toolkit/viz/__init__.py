"""Plotly figures and a self-contained HTML report for RET macrostates.

All figures share one colour per group (:func:`group_colors`) and one style
(:func:`figure_style`), so a group looks the same in the trajectory view, the
transition heatmap/graph, the group table and the report.
"""

from ret_toolkit.viz.report import render_report, write_report
from ret_toolkit.viz.tables import group_table, metrics_table
from ret_toolkit.viz.trajectory import (
    PALETTE,
    figure_style,
    group_color,
    group_colors,
    group_labels,
    trajectory_figure,
    trajectory_html,
)
from ret_toolkit.viz.transitions import transition_graph, transition_heatmap

__all__ = [
    "PALETTE",
    "figure_style",
    "group_color",
    "group_colors",
    "group_labels",
    "trajectory_figure",
    "trajectory_html",
    "transition_heatmap",
    "transition_graph",
    "metrics_table",
    "group_table",
    "render_report",
    "write_report",
]
