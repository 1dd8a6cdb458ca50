"""Batches of windows sent as the rows they lie in; the windows are cut where the model runs.

A batch of :class:`~activation_cache.data.TokenWindows` windows of ``length`` rows each
copies every row ``length`` times and converts it to float32 before it reaches the
model. :class:`WindowBatches` sends instead, for each chunk block the batch's windows lie
in, the rows they cover (each row once per batch, in the store's own dtype: float16 or
bfloat16 at two bytes a value) and where each window starts in them; :func:`cut_windows`
cuts the ``(B, length, F)`` windows from those rows with one index gather on the model's
device.

:class:`WindowBatchSampler` yields the batches as lists of window indices: the order of
:class:`~activation_cache.data.ChunkShuffleSampler` (chunk-local shuffle, DDP-aware),
cut every ``batch_size`` indices, so a batch holds exactly the windows that a
``DataLoader(windows, batch_size, sampler=ChunkShuffleSampler(...))`` batch holds, in the
same order. Use them as ``DataLoader(WindowBatches(windows), sampler=WindowBatchSampler(...),
batch_size=None)``; each worker process opens its own HDF5 handle.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from activation_cache.data import ChunkShuffleSampler, TokenWindows

__all__ = ["WindowBatchSampler", "WindowBatches", "cut_windows"]


class WindowBatchSampler(ChunkShuffleSampler):
    """:class:`ChunkShuffleSampler`'s indices of this rank, as lists of ``batch_size`` (the last may be short).

    A ``DistributedSampler`` subclass, so Lightning leaves it in place under DDP and calls
    :meth:`set_epoch`. Other keywords as :class:`ChunkShuffleSampler`'s (``shuffle``,
    ``seed``, ``group``, ``drop_last``: equal shares for all ranks).
    """

    def __init__(self, dataset, batch_size: int, **kwargs):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(dataset, **kwargs)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        order = list(super().__iter__())
        for lo in range(0, len(order), self.batch_size):
            yield order[lo : lo + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)


class WindowBatches(Dataset):
    """Item ``[i, j, ...]`` (a list of window indices): the rows those windows lie in.

    Returns ``{"rows": (R, F), "starts": int64 (B,), "length": int}``: for each chunk
    block (:meth:`TokenWindows.block`) the windows lie in, in the order first needed, the
    rows from its first window's start to its last window's end, concatenated, in the
    store's own dtype (float16, bfloat16 or float32; float32 when stores of different
    dtypes meet in one batch), and the row of ``rows`` where window ``b`` starts;
    ``cut_windows(**item)`` gives the windows.
    """

    def __init__(self, windows: TokenWindows | ConcatDataset):
        self.parts: list[TokenWindows] = list(windows.datasets) if isinstance(windows, ConcatDataset) else [windows]
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])
        lengths = {p.length for p in self.parts}
        if len(lengths) != 1:
            raise ValueError(f"windows of one length only, got {sorted(lengths)}")
        self.length = lengths.pop()

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, indices) -> dict:
        idx = np.asarray(indices, np.int64).reshape(-1)
        part = np.searchsorted(self.bounds, idx, side="right") - 1
        starts = np.empty(len(idx), np.int64)
        blocks, offset = [], 0
        for p in dict.fromkeys(part.tolist()):  # the parts (stores) in the order the batch needs them
            ds, mine = self.parts[p], np.flatnonzero(part == p)
            first = ds.starts[idx[mine] - self.bounds[p]]
            chunk = first // ds.chunk
            for c in dict.fromkeys(chunk.tolist()):
                these = chunk == c
                rel = first[these] - c * ds.chunk
                lo, hi = int(rel.min()), int(rel.max()) + self.length  # only the rows these windows cover
                starts[mine[these]] = offset + rel - lo
                block = ds.as_tensor(ds.block(c)[lo:hi])
                blocks.append(block)
                offset += len(block)
        if len({b.dtype for b in blocks}) > 1:  # stores of different storage dtypes: their common values
            blocks = [b.float() for b in blocks]
        rows = blocks[0].contiguous() if len(blocks) == 1 else torch.cat(blocks)
        return {"rows": rows, "starts": torch.from_numpy(starts), "length": self.length}


def cut_windows(rows: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """The windows of a :class:`WindowBatches` item: (R, F) rows, (B,) starts -> (B, length, F), rows' dtype."""
    index = starts.to(rows.device)[:, None] + torch.arange(int(length), device=rows.device)
    return rows[index]
