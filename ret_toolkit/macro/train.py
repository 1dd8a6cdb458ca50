"""Train the RET encoder from Python: ``train(stores, ...)`` -> trained module and checkpoint.

    from ret_toolkit.macro import train
    result = train(["gen.h5"], layers="15", max_epochs=8)
    result.module, result.checkpoint          # RETModule, runs/macro/ret/version_N/checkpoints/last.ckpt

The same Lightning objects ``ret-train macro fit`` builds (LightningCLI, YAML
configs): a :class:`TrajectoryDataModule`, a :class:`RETModule` wired to it by
:func:`wired_arguments` (which ``ret-train`` links too), and a ``Trainer`` with
CSV logs and a last-checkpoint callback under ``root_dir/ret/version_N``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from activation_cache.errors import InputError
from activation_cache.layers import LayerSpec
from ret_toolkit.macro.datamodule import TrajectoryDataModule
from ret_toolkit.macro.module import RETModule
from ret_toolkit.training import TrainResult, fit_logged, wire

__all__ = ["TrainResult", "WIRED_KEYS", "train", "wire_model", "wired_arguments"]


def wired_arguments(data: TrajectoryDataModule) -> dict[str, Any]:
    """The :class:`RETModule` arguments that ``data`` decides: input width, window, horizon and provenance.

    ``source_model`` / ``source_layers`` are what steering and forecasting read
    later to check that a model and store fit the checkpoint.
    """
    return {"d_input": data.n_features, "window": data.hparams.window, "max_horizon": data.hparams.max_horizon,
            "source_model": data.model_name, "source_layers": list(data.layer_names)}


#: Keys of :class:`RETModule` that come from the data module, never from the caller.
WIRED_KEYS = ("d_input", "window", "max_horizon", "source_model", "source_layers")


def wire_model(data: TrajectoryDataModule, **model_kwargs) -> RETModule:
    """The :class:`RETModule` for ``data`` (:func:`wired_arguments`) with ``model_kwargs`` for the rest."""
    return wire(RETModule, wired_arguments(data), model_kwargs, "RET encoder")


def _not_collapsed(module: RETModule) -> None:
    if module.collapse_message:
        raise InputError(module.collapse_message)


def train(
    stores: Sequence[str | Path],
    layers: LayerSpec = "middle",
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
        layers: layer spec of the input (``"middle"``, ``15``, ``"12,15"``; :mod:`activation_cache.layers`).
        data: other :class:`TrajectoryDataModule` arguments (``window``, ``batch_size``,
            ``val_fraction``, ...).
        model: other :class:`RETModule` arguments (``z_dim``, ``lr``, ...).
        max_epochs, root_dir, seed: as ``--trainer.max_epochs``, the log root and
            ``--seed_everything`` of ``ret-train macro fit``.
        progress: Lightning's progress bar.
        trainer_kwargs: any other ``lightning.pytorch.Trainer`` argument
            (``accelerator``, ``devices``, ``strategy``, ``precision``...).

    Returns:
        :class:`~ret_toolkit.training.TrainResult` (``module``, ``checkpoint``, ``trainer``, ``datamodule``).

    Raises:
        InputError: bad stores or layers, or a collapsed representation (its one-line message).
    """
    import lightning.pytorch as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = TrajectoryDataModule(stores=[str(s) for s in stores], layers=layers, **(data or {}))
    return fit_logged("macro", wire_model(dm, **(model or {})), dm, root_dir=root_dir, max_epochs=max_epochs,
                      progress=progress, check=_not_collapsed, **trainer_kwargs)
