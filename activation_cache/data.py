"""Torch datasets over a trajectory store, read chunk-aligned, never loaded whole.

:class:`TokenWindows` serves windows of ``length`` consecutive tokens that lie
inside one sequence. Reading one window at a time from HDF5 would cost a
chunk decode per window, so the dataset reads whole HDF5 chunks (plus the
``length - 1`` rows of overlap) into a small cache, and
:class:`ChunkShuffleSampler` orders indices so that consecutive windows come
from the same few chunks: shuffled across chunks and within a group of chunks,
each chunk read about once per epoch.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, Dataset, DistributedSampler

from activation_cache import schema
from activation_cache.errors import InputError
from activation_cache.reader import TrajectoryStore
from activation_cache.running_stats import RowStats


def sequence_rows(offsets: np.ndarray, sequences: Sequence[int] | None) -> np.ndarray:
    """bool (N,): True on the token rows of the chosen ``sequences`` (all if None)."""
    n = int(offsets[-1])
    if sequences is None:
        return np.ones(n, bool)
    mark = np.zeros(n + 1, np.int64)
    seq = np.asarray(sequences, np.int64)
    np.add.at(mark, offsets[seq], 1)
    np.add.at(mark, offsets[seq + 1], -1)
    return np.cumsum(mark[:-1]) > 0


def window_starts(offsets: np.ndarray, length: int, sequences: Sequence[int] | None = None, stride: int = 1) -> np.ndarray:
    """Token rows where a window of ``length`` rows fits inside one sequence, int64 (W,).

    Starts are taken every ``stride`` rows from each sequence's first token.
    """
    seqs = range(len(offsets) - 1) if sequences is None else sequences
    parts = [np.arange(offsets[s], offsets[s + 1] - length + 1, stride, dtype=np.int64) for s in seqs]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class TokenWindows(Dataset):
    """Windows of consecutive hidden states from one store.

    Item ``i`` is a float tensor (length, D * len(layers)): the hidden states
    of rows ``starts[i] .. starts[i] + length - 1`` of one sequence, with the
    chosen layers concatenated along the feature axis.

    The HDF5 file is opened lazily in each worker process (h5py handles do not
    survive fork/pickle).
    """

    def __init__(
        self,
        path: str | Path,
        layers: Sequence[int | str],
        length: int,
        sequences: Sequence[int] | None = None,
        stride: int = 1,
        dtype: torch.dtype = torch.float32,
        cache_chunks: int = 8,
    ):
        if length < 1:
            raise InputError(f"window length must be >= 1, got {length}")
        self.path = Path(path)
        with TrajectoryStore(self.path) as store:
            self.layers = [store.check_layer(x) for x in layers]
            self.offsets = store.offsets.copy()
            self.d_model = store.d_model
            self.model = store.model
            self.stored_dtype = store.dtype
            first = store.h5[f"hidden/{self.layers[0]}"]
            self.chunk = int(first.chunks[0]) if first.chunks else 4096
            compressed = any(store.h5[f"hidden/{n}"].compression for n in self.layers)
        self.length = length
        self.starts = window_starts(self.offsets, length, sequences, stride)
        self.dtype = dtype
        self.cache_chunks = cache_chunks
        # A block's last length-1 rows lie in the next chunk: through HDF5's chunk cache they would
        # read that whole chunk; without it an uncompressed store reads just those rows.
        self._file = schema.ProcessFile(self.path, chunk_cache=compressed)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def n_features(self) -> int:
        return self.d_model * len(self.layers)

    def __len__(self) -> int:
        return len(self.starts)

    def block(self, c: int) -> np.ndarray:
        """Rows [c*chunk, (c+1)*chunk + length - 1) of all layers as stored, (rows, D*L): chunk ``c`` and
        the rows its last windows reach into (kept in a small cache; :meth:`as_tensor` gives the values)."""
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        lo = c * self.chunk
        hi = min(lo + self.chunk + self.length - 1, int(self.offsets[-1]))
        # as stored (a bfloat16 store's raw bits): half the bytes of float32 to cache and to send
        parts = [self._file.dataset(f"hidden/{n}")[lo:hi] for n in self.layers]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        self._cache[c] = block
        if len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return block

    def read_rows(self, lo: int, hi: int, out: np.ndarray, at: int) -> None:
        """Rows [lo, hi) of all layers, as stored, straight from the file into ``out[at : at + hi - lo]``
        (``out``: (R, D * len(layers)) of :attr:`storage_dtype`; :meth:`schema.ProcessFile.read_rows`)."""
        self._file.read_rows([f"hidden/{n}" for n in self.layers], lo, hi,
                             out.reshape(len(out), len(self.layers), self.d_model), at)

    @property
    def storage_dtype(self) -> np.dtype:
        """numpy dtype of the stored values (a bfloat16 store's bit patterns are 16-bit integers)."""
        return np.dtype(schema.HIDDEN_DTYPES[self.stored_dtype])

    def __getitem__(self, i: int) -> torch.Tensor:
        start = int(self.starts[i])
        c = start // self.chunk
        rel = start - c * self.chunk
        return self.as_tensor(np.ascontiguousarray(self.block(c)[rel : rel + self.length])).to(self.dtype)

    def as_tensor(self, stored: np.ndarray) -> torch.Tensor:
        """Rows as stored -> a tensor of the values without copying: float16, float32 or bfloat16 (exact)."""
        return schema.stored_tensor(stored, self.stored_dtype)

    def chunk_of(self) -> np.ndarray:
        """HDF5 chunk index of each window, int64 (W,), for chunk-aware sampling."""
        return self.starts // self.chunk

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # the file handle drops itself (schema.ProcessFile)
        return state


class ChunkShuffleSampler(DistributedSampler):
    """Chunk-local shuffling for :class:`TokenWindows`, DDP-aware.

    Each epoch: shuffle the order of HDF5 chunks, cut it into groups of
    ``group`` chunks, shuffle the windows inside each group. Every rank then
    takes every ``num_replicas``-th index, which keeps its reads chunk-local
    and gives all ranks the same number of samples. A subclass of
    ``DistributedSampler`` so that Lightning leaves it in place under DDP and
    calls :meth:`set_epoch`.
    """

    def __init__(
        self,
        dataset: TokenWindows,
        shuffle: bool = True,
        seed: int = 0,
        group: int = 4,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = True,
    ):
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.group = group
        self.chunks = dataset.chunk_of()

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.chunks))
        rng = np.random.default_rng(self.seed + self.epoch)
        uniq = np.unique(self.chunks)
        rank_of_chunk = np.empty(int(uniq.max()) + 1 if len(uniq) else 0, np.int64)
        rank_of_chunk[uniq] = rng.permutation(len(uniq))
        group = rank_of_chunk[self.chunks] // self.group
        # sort by (group, random key): groups in shuffled order, windows shuffled within
        return np.lexsort((rng.random(len(self.chunks)), group))

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        usable = self.num_samples * self.num_replicas
        if usable > len(order):  # drop_last=False: pad by wrapping, as DistributedSampler does
            order = np.concatenate([order, order[: usable - len(order)]])
        return iter(order[:usable][self.rank :: self.num_replicas].tolist())


class ChunkShuffleBatches(ChunkShuffleSampler):
    """:class:`ChunkShuffleSampler`'s indices of this rank cut every ``batch_size``: int64 arrays, exactly the
    batches of ``DataLoader(dataset, batch_size, sampler=ChunkShuffleSampler(...))``, for a dataset whose items
    are whole batches. Other keywords as :class:`ChunkShuffleSampler`'s."""

    def __init__(self, dataset, batch_size: int, **kwargs):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(dataset, **kwargs)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[np.ndarray]:  # type: ignore[override]
        order = np.fromiter(super().__iter__(), np.int64)
        return iter([order[lo : lo + self.batch_size] for lo in range(0, len(order), self.batch_size)])

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)


class ConcatChunked(ConcatDataset):
    """Several datasets with a ``chunk_of()`` as one, with globally unique chunk ids."""

    def chunk_of(self) -> np.ndarray:
        out, base = [], 0
        for ds in self.datasets:
            c = ds.chunk_of()
            out.append(c + base)
            base += int(c.max()) + 1 if len(c) else 0
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def standardization_stats(
    path: str | Path, layers: Sequence[int | str], sequences: Sequence[int] | None = None,
    check_sequences: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std over the chosen sequences' tokens, float32 (D * len(layers),) each.

    A store that keeps running statistics (:meth:`TrajectoryStore.layer_stats`) answers
    with a read: its totals, less the statistics of the rows outside ``sequences`` when
    those are fewer (one pass over them: the validation split, ~``val_fraction`` of the
    data); finite totals also show that every value is finite. Otherwise one streaming
    pass in chunk-sized blocks, accumulated in float64. Raises InputError if there are no
    tokens or a value is not finite, in ``sequences`` or in ``check_sequences`` (e.g. the
    validation split, read in the same pass).
    """
    with TrajectoryStore(path) as store:
        names = [store.check_layer(x) for x in layers]
        rows = sequence_rows(store.offsets, sequences)
        if not rows.any():
            raise InputError(f"{path}: no tokens to compute standardisation statistics from (empty store or split)")
        checked = rows | sequence_rows(store.offsets, check_sequences) if check_sequences is not None else rows
        means, stds = [], []
        for name in names:
            kept = store.layer_stats(name)
            if kept is not None and np.isfinite(kept.mean).all() and np.isfinite(kept.m2).all():
                outside = ~rows
                if not outside.any():
                    st = kept
                elif outside.sum() < rows.sum():
                    st = kept - _pass_stats(store, name, outside, checked=outside & checked)
                else:
                    st = _pass_stats(store, name, rows, checked)
            else:
                st = _pass_stats(store, name, rows, checked)
            means.append(st.mean)
            stds.append(st.std + 1e-6)
    return torch.from_numpy(np.concatenate(means)).float(), torch.from_numpy(np.concatenate(stds)).float()


def _pass_stats(store: TrajectoryStore, name: str, rows: np.ndarray, checked: np.ndarray | None = None) -> RowStats:
    """Statistics of the marked ``rows`` of one layer from a pass in blocks of chunks; raises InputError
    for a non-finite value in the ``checked`` rows (read too; none checked if None)."""
    ds = store.hidden_dataset(name)
    step = (ds.chunks[0] if ds.chunks else 4096) * 4
    total = RowStats.empty(ds.shape[1])
    for lo in range(0, store.n_tokens, step):
        hi = min(lo + step, store.n_tokens)
        need = rows[lo:hi] if checked is None else rows[lo:hi] | checked[lo:hi]
        if not need.any():
            continue
        block = ds[lo:hi]
        if checked is not None and checked[lo:hi].any():
            look = checked[lo:hi]
            finite = np.isfinite(block[look]).all(1)
            if not finite.all():
                bad = lo + int(np.flatnonzero(look)[np.argmin(finite)])
                seq = int(np.searchsorted(store.offsets, bad, side="right")) - 1
                raise InputError(f"{store.path}: non-finite hidden state in /hidden/{name} at token row {bad} "
                                 f"(sequence {seq})")
        total = total + RowStats.of(block[rows[lo:hi]])
    return total
