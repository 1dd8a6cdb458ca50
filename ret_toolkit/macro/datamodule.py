"""LightningDataModule over one or more trajectory stores, split by sequence.

Training rows are windows of ``window + max_horizon`` consecutive hidden states
of one sequence (see :class:`activation_cache.data.TokenWindows`). The split
into training and validation sequences is a seeded permutation, identical on
every rank; tokens of one sequence never land on both sides.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from activation_cache.data import ChunkShuffleSampler, TokenWindows, standardization_stats
from activation_cache.errors import InputError
from activation_cache.reader import TrajectoryStore


def resolve_layers(spec: str, n_model_layers: int, available: list[str]) -> list[str]:
    """``"middle"`` (the middle block), ``"embed"``, or a comma list of block indices."""
    names = []
    for part in (p.strip() for p in str(spec).split(",") if p.strip()):
        if part == "middle":
            names.append(str(n_model_layers // 2))
        elif part == "embed":
            names.append("embed")
        else:
            try:
                i = int(part)
            except ValueError:
                raise InputError(f"bad layer {part!r}: use 'middle', 'embed' or block indices like 15 or 10,15") from None
            names.append(str(i + n_model_layers if i < 0 else i))
    missing = [n for n in names if n not in available]
    if not names or missing:
        raise InputError(f"layer(s) {missing or spec!r} not in the store (it has {', '.join(available)})")
    return names


def split_sequences(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, validation) sequence indices, each sorted."""
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if n_val == 0 and val_fraction > 0 and n > 1:
        n_val = 1
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class ConcatWindows(ConcatDataset):
    """Several :class:`TokenWindows` as one dataset, with globally unique chunk ids."""

    def chunk_of(self) -> np.ndarray:
        out, base = [], 0
        for ds in self.datasets:
            c = ds.chunk_of()
            out.append(c + base)
            base += int(c.max()) + 1 if len(c) else 0
        return np.concatenate(out) if out else np.zeros(0, np.int64)


class TrajectoryDataModule(pl.LightningDataModule):
    """Windows of hidden states from trajectory stores, for RET training.

    Args:
        stores: paths of one or more stores of the same model.
        layers: ``"middle"`` (default), ``"embed"`` or block indices ``"10,15"``; several
            layers are concatenated along the feature axis.
        window, max_horizon: windows are ``window + max_horizon`` tokens long
            (the encoder's window plus the furthest prediction target).
        batch_size: windows per batch (per process under DDP).
        val_fraction: share of sequences held out for validation (by sequence).
        split_seed: seed of the train/validation split.
        stride: take a window start every ``stride`` tokens.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        stores: list[str],
        layers: str = "middle",
        window: int = 8,
        max_horizon: int = 8,
        batch_size: int = 256,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        stride: int = 1,
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if isinstance(stores, (str, Path)):
            stores = [str(stores)]
        if not stores:
            raise InputError("no trajectory store given (data.stores is empty)")
        self.stores = [str(s) for s in stores]
        infos = []
        for path in self.stores:
            with TrajectoryStore(path) as st:
                if st.n_sequences == 0:
                    raise InputError(f"{path}: store has no committed sequences")
                infos.append((st.model, st.d_model, st.n_model_layers, st.layers, st.n_sequences))
        model, d_model, n_layers, available, _ = infos[0]
        for path, info in zip(self.stores, infos):
            if info[:2] != (model, d_model):
                raise InputError(f"{path}: store is from {info[0]} (d_model {info[1]}), but {self.stores[0]} is from {model} (d_model {d_model})")
        self.model_name = model
        self.d_model = d_model
        self.layer_names = resolve_layers(layers, n_layers, available)
        self.n_features = d_model * len(self.layer_names)
        self.length = window + max_horizon
        self.splits = [split_sequences(info[4], val_fraction, split_seed) for info in infos]
        self.standardization: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def layers_str(self) -> str:
        return ",".join(self.layer_names)

    def setup(self, stage: str | None = None) -> None:
        if self.standardization is None:
            self.standardization = self._train_stats()
        hp = self.hparams
        self.train_set = ConcatWindows([TokenWindows(p, self.layer_names, self.length, tr, hp.stride)
                                        for p, (tr, _) in zip(self.stores, self.splits)])
        self.val_set = ConcatWindows([TokenWindows(p, self.layer_names, self.length, va, hp.stride)
                                      for p, (_, va) in zip(self.stores, self.splits)])
        if len(self.train_set) == 0:
            raise InputError(f"no training window of {self.length} tokens fits in the sequences of {', '.join(self.stores)}; "
                             "use shorter window/max_horizon or longer sequences")

    def _train_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-weighted mean/std over the training sequences of all stores."""
        total, s1, s2 = 0, 0.0, 0.0
        for path, (train, _) in zip(self.stores, self.splits):
            mean, std = standardization_stats(path, self.layer_names, train)
            with TrajectoryStore(path) as st:
                n = int(st.lengths()[train].sum())
            total += n
            s1 = s1 + n * mean.double()
            s2 = s2 + n * (std.double() ** 2 + mean.double() ** 2)
        mean = s1 / total
        std = (s2 / total - mean**2).clamp_min(0).sqrt()
        return mean.float(), std.float()

    def _loader(self, ds: ConcatWindows, shuffle: bool) -> DataLoader:
        hp = self.hparams
        sampler = ChunkShuffleSampler(ds, shuffle=shuffle, seed=hp.split_seed, drop_last=shuffle)
        return DataLoader(ds, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
                          drop_last=False, persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, shuffle=False)
