"""Train a VQ-VAE on a block of trajectory stores from Python: ``train(stores, block, ...)`` -> module and checkpoint.

    from ret_toolkit.vq import BlockSpec, train
    run = train(["gen.h5"], BlockSpec(layers="1-28", start=-4, stop=0), max_epochs=20)
    run.module, run.checkpoint              # VQModule, runs/vq/vq/version_N/checkpoints/last.ckpt

The Lightning objects of ``ret-train vq fit``: a :class:`BlockDataModule`, a
:class:`VQModule` wired to it by :func:`wired_arguments` (which ``ret-train``
links too) and a ``Trainer`` with CSV logs and a last checkpoint; with
``checkpoint=False`` the same fit without files (a probe inside an analysis).
This is the one way to fit a VQ probe on stores; :func:`~ret_toolkit.vq.fit.fit_vq`
fits blocks already in memory (synthetic validation sources).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ret_toolkit.training import TrainResult, fit_logged, fit_quiet, wire
from ret_toolkit.vq.blocks import BlockSpec
from ret_toolkit.vq.datamodule import BlockDataModule
from ret_toolkit.vq.module import VQModule

__all__ = ["WIRED_KEYS", "train", "wire_model", "wired_arguments"]

#: Keys of :class:`VQModule` that come from the data module, never from the caller.
WIRED_KEYS = ("d_input", "n_layers", "max_offset", "source_model", "block_info", "seed")


def wired_arguments(data: BlockDataModule) -> dict[str, Any]:
    """The :class:`VQModule` arguments that ``data`` decides: the block's shape, provenance and seed."""
    return {"d_input": data.d_model, "n_layers": data.n_block_layers, "max_offset": data.max_offset,
            "source_model": data.model_name, "block_info": data.block_info, "seed": data.hparams.split_seed}


def wire_model(data: BlockDataModule, **model_kwargs) -> VQModule:
    """The :class:`VQModule` for ``data`` (:func:`wired_arguments`) with ``model_kwargs`` for the rest."""
    return wire(VQModule, wired_arguments(data), model_kwargs, "VQ model")


def train(stores: Sequence[str | Path] | str, block: BlockSpec = BlockSpec(), *, data: dict | None = None,
          model: dict | None = None, max_epochs: int = 20, root_dir: str | Path = "runs/vq", seed: int = 0,
          progress: bool = True, checkpoint: bool = True, **trainer_kwargs) -> TrainResult:
    """Train a :class:`VQModule` on ``block`` of ``stores``; returns the module (eval mode) and its last checkpoint.

    Args:
        stores: trajectory stores of one model.
        block: which (layer, position) cells form a block (:class:`BlockSpec`).
        data: other :class:`BlockDataModule` arguments (``align_with``, ``anchor``,
            ``batch_size``, ``val_fraction`` ...); ``split_seed`` defaults to ``seed``.
        model: other :class:`VQModule` arguments (``num_codes``, ``dim``, ``lr`` ...).
        max_epochs, root_dir, seed, progress, trainer_kwargs: as :func:`ret_toolkit.macro.train`.
        checkpoint: False fits a probe without files: no logs, no checkpoint, no progress bar
            (:func:`~ret_toolkit.training.fit_quiet`; the planning analyses' probes);
            ``run.checkpoint`` is then None.
    """
    import lightning.pytorch as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    stores = [stores] if isinstance(stores, (str, Path)) else list(stores)
    dm = BlockDataModule([str(s) for s in stores], block=block, **{"split_seed": seed, **(data or {})})
    module = wire_model(dm, **(model or {}))
    if not checkpoint:
        trainer = fit_quiet(module, max_epochs, trainer_kwargs=trainer_kwargs, datamodule=dm)
        return TrainResult(module.eval(), None, trainer, dm)
    run = fit_logged("vq", module, dm, root_dir=root_dir, max_epochs=max_epochs, progress=progress,
                     **trainer_kwargs)
    run.module.eval()
    return run
