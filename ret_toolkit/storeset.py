"""Several trajectory stores of one model, split into training and validation sequences.

Shared by the data modules (RET windows, VQ blocks): the checks that the stores
exist, are non-empty and come from one model; the seeded by-sequence split;
the token-weighted standardisation statistics of the training sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from activation_cache.data import (
    ChunkShuffleSampler,
    ConcatChunked,
    standardization_stats,
)
from activation_cache.errors import InputError
from activation_cache.reader import TrajectoryStore
from activation_cache.window_batches import as_is


#: The by-sequence validation split every data module draws unless told otherwise.
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def split_sequences(n: int, val_fraction: float, seed: int, sequences: Sequence[int] | None = None,
                    where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, validation) sequence indices, each sorted.

    ``sequences``: split only these indices of ``range(n)`` (the rest belong to neither side).
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    chosen = np.arange(n) if sequences is None else np.unique(np.asarray(sequences, dtype=np.int64))
    if len(chosen) == 0 or chosen[0] < 0 or chosen[-1] >= n:
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}data.sequences must be indices in 0..{n - 1}, got "
                         + (f"{len(chosen)} from {chosen[0]} to {chosen[-1]}" if len(chosen) else "none"))
    perm = chosen[np.random.default_rng(seed).permutation(len(chosen))]
    n_val = int(round(len(chosen) * val_fraction))
    if n_val == 0 and val_fraction > 0 and len(chosen) > 1:
        n_val = 1
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass
class StoreSet:
    """Checked description of ``paths``; ``splits[i]`` = (train, val) sequence indices of store i."""

    paths: list[str]
    model_name: str
    d_model: int
    n_model_layers: int
    layers: list[str]
    n_sequences: list[int]
    splits: list[tuple[np.ndarray, np.ndarray]]

    def split_record(self) -> dict[str, dict[str, list[int]]]:
        """The split as it is kept in a checkpoint: resolved store path -> train / val sequence indices."""
        return {str(Path(p).resolve()): {"train": tr.tolist(), "val": va.tolist()}
                for p, (tr, va) in zip(self.paths, self.splits)}

    @classmethod
    def open(cls, paths: Sequence[str] | str, val_fraction: float = VAL_FRACTION, split_seed: int = SPLIT_SEED,
             sequences: Sequence[int] | None = None) -> "StoreSet":
        """Check ``paths`` and split their sequences; ``sequences`` restricts one store to those
        sequence indices (the split is then drawn among them; the others are never read)."""
        if isinstance(paths, (str, Path)):
            paths = [str(paths)]
        paths = [str(p) for p in paths]
        if not paths:
            raise InputError("no trajectory store given (data.stores is empty)")
        if sequences is not None and len(paths) != 1:
            raise InputError(f"data.sequences selects sequences of one store, but {len(paths)} stores are given")
        infos = []
        for path in paths:
            with TrajectoryStore(path) as st:
                if st.n_sequences == 0:
                    raise InputError(f"{path}: store has no committed sequences")
                infos.append((st.model, st.d_model, st.n_model_layers, st.layers, st.n_sequences))
        model, d_model, n_layers, available, _ = infos[0]
        for path, info in zip(paths, infos):
            if info[:2] != (model, d_model):
                raise InputError(f"{path}: store is from {info[0]} (d_model {info[1]}), "
                                 f"but {paths[0]} is from {model} (d_model {d_model})")
        splits = [split_sequences(i[4], val_fraction, split_seed, sequences, where=p) for p, i in zip(paths, infos)]
        return cls(paths, model, d_model, n_layers, available, [i[4] for i in infos], splits)

    def train_standardization(self, layer_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-weighted mean/std over the training sequences of all stores, (len(layers) * D,) each.

        InputError if a training or validation sequence holds a non-finite value."""
        total, s1, s2 = 0, 0.0, 0.0
        for path, (train, val) in zip(self.paths, self.splits):
            # the validation split is checked for NaN/inf in the same pass (it is not used for the statistics)
            mean, std = standardization_stats(path, layer_names, train, check_sequences=val)
            with TrajectoryStore(path) as st:
                n = int(st.lengths()[train].sum())
            total += n
            s1 = s1 + n * mean.double()
            s2 = s2 + n * (std.double() ** 2 + mean.double() ** 2)
        mean = s1 / total
        std = (s2 / total - mean**2).clamp_min(0).sqrt()
        return mean.float(), std.float()


class StoreDataModule(pl.LightningDataModule):
    """Loaders shared by the store-backed data modules.

    Subclasses set ``store_set`` (:class:`StoreSet`) in ``__init__`` and
    ``train_set`` / ``val_set`` (:class:`ConcatChunked`) in ``setup``, and have
    hparams ``batch_size``, ``split_seed``, ``num_workers``. Training batches
    are chunk-local shuffles (:class:`ChunkShuffleSampler`, DDP-aware);
    validation is in order. The split travels in every checkpoint
    (:meth:`state_dict`, under the class name), so the held-out sequences are
    read back, not recomputed (:func:`recorded_split`).
    """

    collate_fn = None

    def state_dict(self) -> dict:
        return {"splits": self.store_set.split_record()}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed run keeps the split it started with: the one this module drew must be it."""
        recorded = state_dict.get("splits")
        # compared store by store in order: a store that moved keeps its split
        if recorded is not None and list(recorded.values()) != list(self.store_set.split_record().values()):
            raise InputError("the checkpoint was trained on another train/validation split of these stores "
                             "(other data.val_fraction, data.split_seed, data.sequences or stores); resume with "
                             "the data settings it was trained with")

    def row_batches(self, ds: ConcatChunked, shuffle: bool) -> tuple[Dataset, Sampler] | None:
        """A dataset whose items are whole batches sent as the rows they lie in (the module cuts its
        inputs from them on its device), and the sampler of those items; None: one copied item each."""
        return None

    def _loader(self, ds: ConcatChunked, shuffle: bool) -> DataLoader:
        hp = self.hparams
        rows = self.row_batches(ds, shuffle)
        if rows is not None:
            return DataLoader(rows[0], batch_size=None, sampler=rows[1], num_workers=hp.num_workers,
                              collate_fn=as_is, pin_memory=torch.cuda.is_available(), persistent_workers=hp.num_workers > 0)
        sampler = ChunkShuffleSampler(ds, shuffle=shuffle, seed=hp.split_seed, drop_last=shuffle)
        return DataLoader(ds, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
                          collate_fn=self.collate_fn, persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if len(self.val_set) else []


def recorded_split(checkpoint: dict, store_path: str | Path, n_sequences: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sequence indices of ``store_path`` in the split a checkpoint was trained with.

    Checkpoints written since the split is recorded hold it (the data module's
    :meth:`StoreDataModule.state_dict`); for a store the checkpoint was not
    trained on, or an older checkpoint, the split is drawn again from the data
    module's recorded ``val_fraction``, ``split_seed`` and ``sequences``.
    """
    dm = checkpoint.get("datamodule_hyper_parameters") or {}
    for key, state in checkpoint.items():
        if isinstance(state, dict) and isinstance(state.get("splits"), dict) and key.endswith("DataModule"):
            split = state["splits"].get(str(Path(store_path).resolve()))
            if split is not None:
                train, val = (np.asarray(split[side], dtype=np.int64) for side in ("train", "val"))
                if len(train) + len(val) and max(train.max(initial=-1), val.max(initial=-1)) >= n_sequences:
                    raise InputError(f"{store_path}: the checkpoint's split names sequences up to "
                                     f"{max(train.max(initial=-1), val.max(initial=-1))}, but the store has "
                                     f"{n_sequences}; is this the store it was trained on?")
                return train, val
    return split_sequences(n_sequences, float(dm.get("val_fraction", VAL_FRACTION)),
                           int(dm.get("split_seed", SPLIT_SEED)), dm.get("sequences"), where=str(store_path))
