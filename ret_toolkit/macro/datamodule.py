"""LightningDataModule over one or more trajectory stores, split by sequence.

Training rows are windows of ``window + max_horizon`` consecutive hidden states
of one sequence (see :class:`activation_cache.data.TokenWindows`). The split
into training and validation sequences is a seeded permutation, identical on
every rank; tokens of one sequence never land on both sides.
"""

from __future__ import annotations

import torch

from activation_cache.data import ConcatChunked, TokenWindows
from activation_cache.errors import InputError
from activation_cache.layers import select_layers
from activation_cache.window_batches import WindowBatchSampler, WindowBatches
from ret_toolkit.hparams import check_hparams
from ret_toolkit.storeset import SPLIT_SEED, VAL_FRACTION, StoreDataModule, StoreSet


class TrajectoryDataModule(StoreDataModule):
    """Windows of hidden states from trajectory stores, for RET training.

    A batch is ``{"rows", "starts", "length"}``
    (:class:`~activation_cache.window_batches.WindowBatches`): the rows its windows lie in,
    each sent once in the store's dtype, and where each window starts; the RET module
    cuts the ``(B, window + max_horizon, F)`` windows on its device. The windows of a batch
    are those of a per-window ``DataLoader`` with the same sampler.

    Args:
        stores: paths of one or more stores of the same model.
        layers: a layer spec (:mod:`activation_cache.layers`): ``"middle"`` (default),
            ``"embed"``, ``"15"``, ``"10,15"``, ``"-1"``; several layers are concatenated
            along the feature axis, in the order given.
        window, max_horizon: windows are ``window + max_horizon`` tokens long
            (the encoder's window plus the furthest prediction target).
        batch_size: windows per batch (per process under DDP).
        val_fraction: share of sequences held out for validation (by sequence).
        split_seed: seed of the train/validation split.
        stride: take a window start every ``stride`` tokens.
        num_workers: DataLoader worker processes.
        sequences: train (and validate) on these sequence indices of a single store only
            (None: all); the in-domain forecaster trains on its training folds so.
    """


    def __init__(
        self,
        stores: list[str],
        layers: str = "middle",
        window: int = 8,
        max_horizon: int = 8,
        batch_size: int = 256,
        val_fraction: float = VAL_FRACTION,
        split_seed: int = SPLIT_SEED,
        stride: int = 1,
        num_workers: int = 0,
        sequences: list[int] | None = None,
    ):
        super().__init__()
        check_hparams("data", locals(), {"window": "count", "max_horizon": "count", "batch_size": "count",
                                         "val_fraction": "fraction", "stride": "count", "num_workers": "index"})
        self.save_hyperparameters()
        self.store_set = StoreSet.open(stores, val_fraction, split_seed, sequences)
        self.stores, self.splits = self.store_set.paths, self.store_set.splits
        self.model_name = self.store_set.model_name
        self.d_model = self.store_set.d_model
        self.layer_names = select_layers(layers, self.store_set.n_model_layers, self.store_set.layers)
        self.n_features = self.d_model * len(self.layer_names)
        self.length = window + max_horizon
        self.standardization: tuple[torch.Tensor, torch.Tensor] | None = None

    def row_batches(self, ds: ConcatChunked, shuffle: bool) -> tuple[WindowBatches, WindowBatchSampler]:
        # every window each epoch (a rank short of a batch repeats one): the last batch is short anyway
        return WindowBatches(ds), WindowBatchSampler(ds, self.hparams.batch_size, shuffle=shuffle,
                                                     seed=self.hparams.split_seed, drop_last=False)

    def setup(self, stage: str | None = None) -> None:
        if self.standardization is None:
            self.standardization = self.store_set.train_standardization(self.layer_names)
        hp = self.hparams
        self.train_set = ConcatChunked([TokenWindows(p, self.layer_names, self.length, tr, hp.stride)
                                        for p, (tr, _) in zip(self.stores, self.splits)])
        self.val_set = ConcatChunked([TokenWindows(p, self.layer_names, self.length, va, hp.stride)
                                      for p, (_, va) in zip(self.stores, self.splits)])
        if len(self.train_set) == 0:
            raise InputError(f"no training window of {self.length} tokens fits in the sequences of {', '.join(self.stores)}; "
                             "use shorter window/max_horizon or longer sequences")
