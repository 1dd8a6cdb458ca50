"""Train a small GPT on a synthetic task from Python: ``train_task(...)`` -> module, checkpoint and model directory.

    from ret_toolkit.planning import train_task
    run = train_task("pathfinding", data={"path_nodes": 4}, model={"n_layer": 4}, max_epochs=4)
    run.model_dir        # a transformers directory for ret-extract --model / ret-planning --model

The Lightning objects of ``ret-train task fit``: a :class:`TaskDataModule`, a
:class:`TaskLM` wired to its tokenizer by :func:`wired_arguments` (which
``ret-train`` links too) and a ``Trainer`` with CSV logs and a last checkpoint;
the trained model is then exported with :func:`export_task_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ret_toolkit.planning.datamodule import TaskDataModule, export_task_model
from ret_toolkit.planning.model import TaskLM
from ret_toolkit.planning.regimes import regime_settings
from ret_toolkit.training import TrainResult, fit_logged, wire

__all__ = ["TaskTrainResult", "WIRED_KEYS", "train_task", "wire_model", "wired_arguments"]

#: Keys of :class:`TaskLM` that come from the data module, never from the caller.
WIRED_KEYS = ("vocab_size", "bos_id", "eos_id", "pad_id")


def wired_arguments(data: TaskDataModule) -> dict[str, Any]:
    """The :class:`TaskLM` arguments that ``data``'s tokenizer decides: vocabulary size and special ids."""
    return {"vocab_size": data.vocab_size, "bos_id": data.bos_id, "eos_id": data.eos_id, "pad_id": data.pad_id}


def wire_model(data: TaskDataModule, **model_kwargs) -> TaskLM:
    """The :class:`TaskLM` for ``data`` (:func:`wired_arguments`) with ``model_kwargs`` for the rest."""
    return wire(TaskLM, wired_arguments(data), model_kwargs, "task model")


@dataclass
class TaskTrainResult(TrainResult):
    """:class:`~ret_toolkit.training.TrainResult` plus the exported model.

    Attributes:
        model_dir: the trained model as a ``transformers`` directory (with its tokenizer).
        accuracy: held-out exact-match accuracy after each epoch (0..1).
    """

    model_dir: Path | None = None
    accuracy: list[float] | None = None


def train_task(task: str = "pathfinding", *, data: dict | None = None, model: dict | None = None,
               regime: str | None = None, max_epochs: int = 4, root_dir: str | Path = "runs/task", seed: int = 0, progress: bool = True,
               **trainer_kwargs) -> TaskTrainResult:
    """Train a :class:`TaskLM` on ``task`` (``"pathfinding"`` or ``"grammar"``) and export it.

    Args:
        data: other :class:`TaskDataModule` arguments (``path_nodes``, ``n_train``, ``batch_size`` ...).
        model: other :class:`TaskLM` arguments (``n_layer``, ``n_embd``, ``lr``, ``mtp_heads`` ...).
        regime: a path-finding training regime of :data:`~ret_toolkit.planning.regimes.REGIMES`
            (``"online"``, ``"corrupt"``, ``"teacherless"``, ``"mtp"``, ``"reverse"``);
            its settings are defaults that ``data`` and ``model`` override.
        max_epochs, root_dir, seed, progress, trainer_kwargs: as :func:`ret_toolkit.macro.train`.

    Returns:
        :class:`TaskTrainResult`; the model directory is ``<log dir>/model``.
    """
    import lightning.pytorch as pl

    regime_data, regime_model = regime_settings(regime) if regime else ({}, {})
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = TaskDataModule(task, **{"seed": seed, **regime_data, **(data or {})})
    run = fit_logged("task", wire_model(dm, **{**regime_model, **(model or {})}), dm, root_dir=root_dir, max_epochs=max_epochs,
                     progress=progress, **trainer_kwargs)
    model_dir = export_task_model(run.module, dm.tokenizer, Path(run.trainer.log_dir) / "model", task=dm.hparams)
    return TaskTrainResult(run.module, run.checkpoint, run.trainer, dm, model_dir, list(run.module.accuracy_history))
