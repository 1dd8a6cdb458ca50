"""Plotly figures and a self-contained HTML report for RET macrostates.

All figures share one colour per group (:func:`group_colors`) and one style
(``viz.style.figure_style``), so a group looks the same in the trajectory view, the
transition heatmap/graph, the group table and the report.
"""

from ret_toolkit.viz.forecast import leadtime_figure, write_forecast_report
from ret_toolkit.viz.planning import branch_figure, history_figure, horizon_figure, write_planning_report
from ret_toolkit.viz.report import render_report, write_report
from ret_toolkit.viz.steering import sweep_figure, write_sweep_html
from ret_toolkit.viz.tables import group_table, metrics_table
from ret_toolkit.viz.style import group_colors
from ret_toolkit.viz.trajectory import trajectory_figure, trajectory_html
from ret_toolkit.viz.transitions import transition_graph, transition_heatmap

__all__ = ["branch_figure", "group_colors", "group_table", "history_figure", "horizon_figure", "leadtime_figure",
           "metrics_table", "render_report", "sweep_figure", "trajectory_figure", "trajectory_html",
           "transition_graph", "transition_heatmap", "write_forecast_report", "write_planning_report",
           "write_report", "write_sweep_html"]
