"""Planning studies on synthetic tasks: small GPTs trained with Lightning, and VQ/MI analyses of them (docs/architecture.md §3.4)."""

from ret_toolkit.planning.analysis import ProbeSettings, branch_awareness, history_heatmap, horizon_curve
from ret_toolkit.planning.datamodule import TaskDataModule, export_task_model, make_task
from ret_toolkit.planning.model import TaskLM
from ret_toolkit.planning.train import TaskTrainResult, train_task

__all__ = ["ProbeSettings", "TaskDataModule", "TaskLM", "TaskTrainResult", "branch_awareness", "export_task_model",
           "history_heatmap", "horizon_curve", "make_task", "train_task"]
