"""Train a VQ model on an in-memory block dataset and read codes back (notebooks, validation).

On stores, :func:`ret_toolkit.vq.train` (or ``ret-train vq``) fits, with logs
and a checkpoint or, with ``checkpoint=False``, quietly without files (the
probes of the planning analyses). :func:`fit_vq` fits the same module on blocks
already in memory (synthetic validation sources).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ret_toolkit.training import fit_quiet
from ret_toolkit.vq.blocks import BlockSpec, TensorBlocks, collate_cells
from ret_toolkit.vq.module import VQModule


def tensor_standardization(ds: TensorBlocks) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer mean/std of the cells, (n_layers, D) each."""
    n_layers = int(ds.layer.max()) + 1
    mean = torch.stack([ds.cells[:, ds.layer == i].reshape(-1, ds.cells.shape[-1]).mean(0) for i in range(n_layers)])
    std = torch.stack([ds.cells[:, ds.layer == i].reshape(-1, ds.cells.shape[-1]).std(0) for i in range(n_layers)])
    return mean, std


def fit_vq(train: TensorBlocks, val: TensorBlocks | None = None, max_epochs: int = 20, batch_size: int = 256,
           seed: int = 0, trainer_kwargs: dict[str, Any] | None = None, **module_kwargs: Any) -> VQModule:
    """Train a :class:`VQModule` on in-memory blocks; returns it in eval mode.

    ``module_kwargs`` go to :class:`VQModule` (``d_input``, ``n_layers`` and
    ``max_offset`` are taken from the data unless given).
    """
    pl.seed_everything(seed, verbose=False)
    kw = {"d_input": train.cells.shape[-1], "n_layers": int(train.layer.max()) + 1,
          "max_offset": max(int(train.pos.abs().max()), 1), "seed": seed, **module_kwargs}
    module = VQModule(**kw)
    module.set_standardization(*tensor_standardization(train))
    g = torch.Generator().manual_seed(seed)
    loaders = [DataLoader(train, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collate_cells)]
    if val is not None:
        loaders.append(DataLoader(val, batch_size=1024, collate_fn=collate_cells))
    fit_quiet(module, max_epochs, *loaders, trainer_kwargs=trainer_kwargs)
    return module.eval()


@torch.no_grad()
def dataset_codes(module: VQModule, ds: Dataset, batch_size: int = 1024) -> np.ndarray:
    """Code of every block in ``ds``, in order: int64 (len(ds),)."""
    module = module.eval()
    out = [module.codes(b).cpu().numpy() for b in DataLoader(ds, batch_size=batch_size, collate_fn=collate_cells)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def fit_vq_store(stores: Sequence[str] | str, block: BlockSpec, align_with: Sequence[BlockSpec] = (),
                 anchor: str = "all", anchor_stride: int = 1, max_epochs: int = 10, batch_size: int = 128,
                 seed: int = 0, val_fraction: float = 0.2, trainer_kwargs: dict[str, Any] | None = None,
                 **module_kwargs: Any) -> VQModule:
    """Deprecated: ``ret_toolkit.vq.train(stores, block, ..., checkpoint=False).module`` (the same fit)."""
    from ret_toolkit.vq.train import train

    warnings.warn("fit_vq_store is deprecated; use ret_toolkit.vq.train(..., checkpoint=False).module",
                  DeprecationWarning, stacklevel=2)
    data = {"align_with": list(align_with), "anchor": anchor, "anchor_stride": anchor_stride,
            "batch_size": batch_size, "val_fraction": val_fraction}
    return train(stores, block, data=data, model=module_kwargs, max_epochs=max_epochs, seed=seed,
                 checkpoint=False, **(trainer_kwargs or {})).module
