"""Train the RET encoder from Python: ``train(stores, ...)`` -> trained module and checkpoint.

    from ret_toolkit.macro import train
    result = train(["gen.h5"], layers="15", max_epochs=8)
    result.module, result.checkpoint          # RETModule, runs/macro/ret/version_N/checkpoints/last.ckpt

The same Lightning objects ``ret-train macro fit`` builds (LightningCLI, YAML
configs): a :class:`TrajectoryDataModule`, a :class:`RETModule` wired to it by
:func:`wire_model`, and a ``Trainer`` with CSV logs and a last-checkpoint
callback under ``root_dir/ret/version_N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from activation_cache.errors import InputError
from activation_cache.quiet import quiet_training
from ret_toolkit.macro.datamodule import TrajectoryDataModule
from ret_toolkit.macro.module import RETModule

#: Keys of :class:`RETModule` that come from the data module, never from the caller.
WIRED_KEYS = ("d_input", "window", "max_horizon", "source_model", "source_layers")


@dataclass
class TrainResult:
    """A finished RET training run."""

    module: RETModule  # the trained module (last epoch)
    checkpoint: Path  # its last checkpoint
    trainer: Any  # the lightning.pytorch.Trainer (logged metrics, log_dir)


def wire_model(data: TrajectoryDataModule, **model_kwargs) -> RETModule:
    """The :class:`RETModule` for ``data``: input width, window, horizon and provenance come from it.

    ``source_model`` / ``source_layers`` are what steering and forecasting read
    later to check that a model and store fit the checkpoint.
    """
    clash = sorted(set(model_kwargs) & set(WIRED_KEYS))
    if clash:
        raise InputError(f"{', '.join(clash)} come from the data module (set window / max_horizon there)")
    return RETModule(d_input=data.n_features, window=data.hparams.window, max_horizon=data.hparams.max_horizon,
                     source_model=data.model_name, source_layers=data.layers_str, **model_kwargs)


def train(
    stores: Sequence[str | Path],
    layers: str = "middle",
    *,
    data: dict | None = None,
    model: dict | None = None,
    max_epochs: int = 10,
    root_dir: str | Path = "runs/macro",
    seed: int = 0,
    progress: bool = True,
    **trainer_kwargs,
) -> TrainResult:
    """Train the RET encoder on ``stores`` and return the module and its last checkpoint.

    Args:
        stores: trajectory stores of one model (same layers).
        layers: layer spec of the input (``"middle"``, ``"15"``, ``"12,15"``).
        data: other :class:`TrajectoryDataModule` arguments (``window``, ``batch_size``,
            ``val_fraction``, ...).
        model: other :class:`RETModule` arguments (``z_dim``, ``lr``, ...).
        max_epochs, root_dir, seed: as ``--trainer.max_epochs``, the log root and
            ``--seed_everything`` of ``ret-train macro fit``.
        progress: Lightning's progress bar.
        trainer_kwargs: any other ``lightning.pytorch.Trainer`` argument
            (``accelerator``, ``devices``, ``strategy``, ``precision``...).

    Raises:
        InputError: bad stores or layers, or a collapsed representation (its one-line message).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = TrajectoryDataModule(stores=[str(s) for s in stores], layers=layers, **(data or {}))
    module = wire_model(dm, **(model or {}))
    defaults = dict(max_epochs=max_epochs, default_root_dir=str(root_dir), log_every_n_steps=10,
                    logger=CSVLogger(save_dir=str(root_dir), name="ret"), enable_model_summary=False,
                    enable_progress_bar=progress)
    defaults.update(trainer_kwargs)
    checkpoint = ModelCheckpoint(save_last=True)
    with quiet_training():  # Lightning's info lines and internal deprecations; its warnings still show
        trainer = pl.Trainer(callbacks=[checkpoint], **defaults)
        trainer.fit(module, datamodule=dm)
    if module.collapse_message:
        raise InputError(module.collapse_message)
    return TrainResult(module, Path(checkpoint.last_model_path), trainer)


__all__ = ["TrainResult", "WIRED_KEYS", "train", "wire_model"]
