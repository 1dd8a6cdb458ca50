"""Planning studies on synthetic tasks: small GPTs trained with Lightning, and VQ/MI analyses of them (docs/architecture.md §3.4)."""

from ret_toolkit.planning.analysis import ProbeSettings, branch_on_store, history_heatmap, horizon_curve
from ret_toolkit.planning.branch import BranchAwareness, branch_awareness
from ret_toolkit.planning.datamodule import TaskDataModule, export_task_model, make_task, task_settings
from ret_toolkit.planning.decode import answers_correct, is_teacherless
from ret_toolkit.planning.goal_swap import GoalSwap, goal_swap
from ret_toolkit.planning.regimes import REGIMES
from ret_toolkit.planning.model import TaskLM
from ret_toolkit.planning.result import PlanningResult
from activation_cache.lazy import lazy_exports
from ret_toolkit.planning.train import TaskTrainResult, train_task

# run_planning traces models (nnsight): loaded on first use
__getattr__, __dir__, __all__ = lazy_exports(__name__, {"run_planning": "ret_toolkit.planning.run"}, eager=dict(
    REGIMES=REGIMES, GoalSwap=GoalSwap, goal_swap=goal_swap, answers_correct=answers_correct, is_teacherless=is_teacherless,
    task_settings=task_settings,
    BranchAwareness=BranchAwareness, PlanningResult=PlanningResult, ProbeSettings=ProbeSettings, TaskDataModule=TaskDataModule, TaskLM=TaskLM,
    TaskTrainResult=TaskTrainResult, branch_awareness=branch_awareness, branch_on_store=branch_on_store, export_task_model=export_task_model,
    history_heatmap=history_heatmap, horizon_curve=horizon_curve, make_task=make_task, train_task=train_task))
