"""Planning studies on synthetic tasks: small GPTs trained with Lightning, and VQ/MI analyses of them (docs/architecture.md §3.4).

The verbs and main types are here; the helpers stay in the modules that define them:

- :mod:`~ret_toolkit.planning.settings`: :class:`PlanningInputs`, :class:`ProbeSettings` (``ret-planning``'s flags);
- :mod:`~ret_toolkit.planning.run`: :func:`run_planning` end to end, returning a :class:`PlanningResult`;
- :mod:`~ret_toolkit.planning.analysis`: :func:`horizon_curve`, :func:`history_heatmap`, ``branch_on_store``;
- :mod:`~ret_toolkit.planning.branch`: :func:`branch_awareness` (plan MI beyond the tokens, with its null);
- :mod:`~ret_toolkit.planning.goal_swap`: :func:`goal_swap`, the causal test of a plan;
- :mod:`~ret_toolkit.planning.datamodule`: :func:`make_task`, :class:`TaskDataModule`, ``task_settings``,
  ``export_task_model``;
- :mod:`~ret_toolkit.planning.model`: :class:`TaskLM`; :mod:`~ret_toolkit.planning.train`: :func:`train_task`;
- :mod:`~ret_toolkit.planning.decode`: ``answers_correct``, ``is_teacherless``;
  :mod:`~ret_toolkit.planning.regimes`: ``REGIMES``.
"""

from activation_cache.lazy import lazy_exports

# Names load their module on first use: importing a settings module of this package stays light.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "BranchAwareness": "ret_toolkit.planning.branch",
    "GoalSwap": "ret_toolkit.planning.goal_swap",
    "PlanningInputs": "ret_toolkit.planning.settings",
    "PlanningResult": "ret_toolkit.planning.result",
    "ProbeSettings": "ret_toolkit.planning.settings",
    "TaskDataModule": "ret_toolkit.planning.datamodule",
    "TaskLM": "ret_toolkit.planning.model",
    "branch_awareness": "ret_toolkit.planning.branch",
    "goal_swap": "ret_toolkit.planning.goal_swap",
    "history_heatmap": "ret_toolkit.planning.analysis",
    "horizon_curve": "ret_toolkit.planning.analysis",
    "make_task": "ret_toolkit.planning.datamodule",
    "run_planning": "ret_toolkit.planning.run",
    "train_task": "ret_toolkit.planning.train",
})
