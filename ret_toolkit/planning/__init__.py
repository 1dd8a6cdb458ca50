"""Planning studies on synthetic tasks: small GPTs trained with Lightning, and VQ/MI analyses of them (docs/architecture.md §3.4)."""

from activation_cache.lazy import lazy_exports

# Names load their module on first use: importing a settings module of this package stays light.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "BranchAwareness": "ret_toolkit.planning.branch",
    "GoalSwap": "ret_toolkit.planning.goal_swap",
    "PlanningInputs": "ret_toolkit.planning.settings",
    "PlanningResult": "ret_toolkit.planning.result",
    "ProbeSettings": "ret_toolkit.planning.settings",
    "REGIMES": "ret_toolkit.planning.regimes",
    "TaskDataModule": "ret_toolkit.planning.datamodule",
    "TaskLM": "ret_toolkit.planning.model",
    "TaskTrainResult": "ret_toolkit.planning.train",
    "answers_correct": "ret_toolkit.planning.decode",
    "branch_awareness": "ret_toolkit.planning.branch",
    "branch_on_store": "ret_toolkit.planning.analysis",
    "export_task_model": "ret_toolkit.planning.datamodule",
    "goal_swap": "ret_toolkit.planning.goal_swap",
    "history_heatmap": "ret_toolkit.planning.analysis",
    "horizon_curve": "ret_toolkit.planning.analysis",
    "is_teacherless": "ret_toolkit.planning.decode",
    "make_task": "ret_toolkit.planning.datamodule",
    "run_planning": "ret_toolkit.planning.run",
    "task_settings": "ret_toolkit.planning.datamodule",
    "train_task": "ret_toolkit.planning.train",
})
