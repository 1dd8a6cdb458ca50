"""The Lightning fit every training API shares: CSV logs and a last checkpoint under ``root_dir/name/version_N``.

:func:`ret_toolkit.macro.train`, :func:`ret_toolkit.vq.train` and
:func:`ret_toolkit.planning.train_task` build their data module, wire the model
to it (each package's ``wired_arguments``, the one place that says which model
arguments come from the data, and what ``ret-train`` links too), then call
:func:`fit_logged`. The trainer defaults are the ones ``ret-train`` uses
(:data:`TRAINER_DEFAULTS`), so a notebook run and a console run write the same
files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activation_cache.errors import InputError
from activation_cache.quiet import quiet_training

__all__ = ["TRAINER_DEFAULTS", "TrainResult", "fit_logged", "fit_quiet", "trainer_defaults", "wire"]

#: Per model family: (log root, run name, trainer defaults) of ``ret-train <family> fit`` and the Python APIs.
TRAINER_DEFAULTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "macro": ("runs/macro", "ret", {"max_epochs": 10, "log_every_n_steps": 10}),
    "vq": ("runs/vq", "vq", {"max_epochs": 20, "log_every_n_steps": 10}),
    "task": ("runs/task", "task", {"max_epochs": 4, "log_every_n_steps": 20}),
    "block": ("runs/block", "block", {"max_epochs": 3, "log_every_n_steps": 5}),
}


def trainer_defaults(family: str, root: str | None = None) -> dict[str, Any]:
    """``ret-train``'s trainer defaults of ``family`` as LightningCLI config (logger as class_path / init_args)."""
    default_root, name, kw = TRAINER_DEFAULTS[family]
    root = root or default_root
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root, "name": name}}
    # No model-summary table by default: commands print their own results (--trainer.enable_model_summary=true).
    return {"default_root_dir": root, "logger": logger, "enable_model_summary": False, **kw}


@dataclass
class TrainResult:
    """A finished training run.

    Attributes:
        module: the trained LightningModule (last epoch).
        checkpoint: its last checkpoint (``root_dir/<name>/version_N/checkpoints/last.ckpt``);
            None for a fit without files (:func:`fit_quiet`).
        trainer: the ``lightning.pytorch.Trainer`` (``logged_metrics``, ``log_dir``).
        datamodule: the data module it was trained on.
    """

    module: Any
    checkpoint: Path | None
    trainer: Any
    datamodule: Any


def wire(model_class: type, wired: Mapping[str, Any], model_kwargs: Mapping[str, Any] | None, what: str):
    """``model_class(**wired, **model_kwargs)``, refusing caller keys that the data decides."""
    model_kwargs = dict(model_kwargs or {})
    clash = sorted(set(model_kwargs) & set(wired))
    if clash:
        raise InputError(f"{', '.join(clash)} of the {what} come from the data module (set them there)")
    return model_class(**wired, **model_kwargs)


def fit_logged(family: str, module, datamodule, *, root_dir: str | Path | None = None, max_epochs: int | None = None,
               progress: bool = True, check: Callable[[Any], None] | None = None,
               **trainer_kwargs) -> TrainResult:
    """Fit ``module`` on ``datamodule`` with ``ret-train``'s defaults for ``family`` and a last checkpoint.

    Seed (``lightning.pytorch.seed_everything``) before building the data and the
    model: their splits and initial weights come from the seed.

    Args:
        family: ``"macro"``, ``"vq"`` or ``"task"`` (:data:`TRAINER_DEFAULTS`).
        root_dir: log root (default ``runs/<family>``).
        max_epochs: default the family's.
        progress: Lightning's progress bar.
        check: called with the module after the fit (raise InputError for a failed run).
        trainer_kwargs: any other ``lightning.pytorch.Trainer`` argument (``accelerator``,
            ``devices``, ``strategy``, ``precision`` ...).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    default_root, name, kw = TRAINER_DEFAULTS[family]
    root = str(root_dir or default_root)
    settings = {**kw, "default_root_dir": root, "logger": CSVLogger(save_dir=root, name=name),
                "enable_model_summary": False, "enable_progress_bar": progress}
    if max_epochs is not None:
        settings["max_epochs"] = max_epochs
    settings.update(trainer_kwargs)
    checkpoint = ModelCheckpoint(save_last=True)
    with quiet_training():  # Lightning's info lines and internal deprecations; its warnings still show
        trainer = pl.Trainer(callbacks=[checkpoint], **settings)
        trainer.fit(module, datamodule=datamodule)
    if check is not None:
        check(module)
    return TrainResult(module, Path(checkpoint.last_model_path), trainer, datamodule)


def fit_quiet(module, max_epochs: int, *loaders, trainer_kwargs: dict[str, Any] | None = None, **fit_kwargs):
    """Fit on one device (Lightning's ``auto`` accelerator) without logger, checkpoints or progress output;
    returns the trainer.

    For models trained as steps inside a larger analysis (the VQ probes of the planning
    analyses): Lightning's per-fit info lines and internal deprecations would repeat for
    every one. ``trainer_kwargs`` override any of it (``accelerator``, ``devices``, ``precision``...).
    """
    import lightning.pytorch as pl

    with quiet_training():
        trainer = pl.Trainer(**{"max_epochs": max_epochs, "accelerator": "auto", "devices": 1, "logger": False,
                                "enable_checkpointing": False, "enable_progress_bar": False,
                                "enable_model_summary": False, "num_sanity_val_steps": 0, **(trainer_kwargs or {})})
        trainer.fit(module, *loaders, **fit_kwargs)
    return trainer
