"""Batches of windows sent as the rows they lie in; the windows are cut where the model runs.

A batch of :class:`~activation_cache.data.TokenWindows` windows of ``length`` rows each
copies every row ``length`` times and converts it to float32 before it reaches the
model. :class:`WindowBatches` sends instead the runs of rows the batch's windows cover,
each row once, read straight from the file into the batch's array in the store's own
dtype (float16 or bfloat16 at two bytes a value), and where each window starts in them;
:func:`cut_windows` cuts the ``(B, length, F)`` windows from those rows with one index
gather on the model's device.

:class:`WindowBatchSampler` yields the batches as :class:`RowPlan` s (what to read, from
:func:`plan_rows`, one vectorised pass an epoch), DDP-aware: when shuffling, the windows
of shuffled whole chunks cut every ``batch_size``, so each stored row is read about once
an epoch; in order, the batches of the per-window loader. Use them as
``DataLoader(WindowBatches(windows), sampler=WindowBatchSampler(...), batch_size=None, collate_fn=as_is)``
(its items are tensors already: the default conversion would only cost time, ~6 us a batch);
each worker process opens its own file handles.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from activation_cache.data import ChunkShuffleBatches, TokenWindows

__all__ = ["RowPlan", "WindowBatchSampler", "WindowBatches", "as_is", "cut_windows", "plan_rows", "read_runs"]


class RowPlan(NamedTuple):
    """What one batch reads: runs of consecutive rows, and where each window starts in them.

    ``windows`` int64 (B,): the window indices in batch order; ``starts`` int64 (B,): the row of
    the batch's array where each starts; runs ``k``: rows ``[lo[k], hi[k])`` of store ``part[k]``
    go to rows ``at[k]`` onwards of the batch's ``total`` rows.
    """

    windows: np.ndarray
    starts: np.ndarray
    part: list[int]
    lo: list[int]
    hi: list[int]
    at: list[int]
    total: int


def _parts(windows: TokenWindows | ConcatDataset) -> list[TokenWindows]:
    return list(windows.datasets) if isinstance(windows, ConcatDataset) else [windows]


def plan_rows(windows: TokenWindows | ConcatDataset, batches: Sequence[np.ndarray]) -> list[RowPlan]:
    """The :class:`RowPlan` of each batch of window indices, computed for all batches at once.

    Per batch and store, the windows' starts are sorted and cut into runs where the next
    window starts past the previous one's end, so each run's rows all lie in some window
    and each such row is read once. One vectorised pass (an epoch's plans cost about a
    microsecond a batch), so reading a batch is only its reads.
    """
    parts = _parts(windows)
    bounds = np.cumsum([0] + [len(p) for p in parts])
    length = parts[0].length
    sizes = np.array([len(b) for b in batches], np.int64)
    if not len(batches) or not sizes.sum():
        return [RowPlan(np.zeros(0, np.int64), np.zeros(0, np.int64), [], [], [], [], 0) for _ in batches]
    idx = np.concatenate([np.asarray(b, np.int64).reshape(-1) for b in batches])
    batch = np.repeat(np.arange(len(batches)), sizes)
    part = np.searchsorted(bounds, idx, side="right") - 1
    first = np.empty(len(idx), np.int64)
    for p, ds in enumerate(parts):
        mine = part == p
        first[mine] = ds.starts[idx[mine] - bounds[p]]
    span = int(first.max()) + 1
    if len(batches) * len(parts) * span < 2**62:  # one int64 key: a stable sort of near-sorted runs is ~linear
        order = np.argsort((batch * len(parts) + part) * span + first, kind="stable")
    else:
        order = np.lexsort((first, part, batch))
    b, pt, f = batch[order], part[order], first[order]
    # a run ends where the batch or the store changes, or the next window starts past this one's end
    new_run = np.ones(len(f), bool)
    new_run[1:] = (b[1:] != b[:-1]) | (pt[1:] != pt[:-1]) | (f[1:] - f[:-1] > length)
    heads = np.flatnonzero(new_run)
    run_lo = f[heads]
    run_hi = f[np.append(heads[1:], len(f)) - 1] + length
    run_b = b[heads]
    behind = np.cumsum(run_hi - run_lo) - (run_hi - run_lo)  # rows of all earlier runs, over all batches
    first_run = np.searchsorted(run_b, np.arange(len(batches)))
    run_at = behind - behind[first_run][run_b]
    run = np.cumsum(new_run) - 1
    starts = np.empty(len(idx), np.int64)
    starts[order] = run_at[run] + f - run_lo[run]
    ends = np.cumsum(sizes)
    run_ends = np.searchsorted(run_b, np.arange(len(batches)), side="right")
    rp, lo, hi, at = (a.tolist() for a in (pt[heads], run_lo, run_hi, run_at))
    plans, s0, r0 = [], 0, 0
    for e, r1 in zip(ends.tolist(), run_ends.tolist()):
        total = at[r1 - 1] + hi[r1 - 1] - lo[r1 - 1] if r1 > r0 else 0
        plans.append(RowPlan(idx[s0:e], starts[s0:e], rp[r0:r1], lo[r0:r1], hi[r0:r1], at[r0:r1], total))
        s0, r0 = e, r1
    return plans


class WindowBatchSampler(ChunkShuffleBatches):
    """Batches of ``batch_size`` windows (the last may be short) for this rank, as :class:`RowPlan` s, DDP-aware.

    With ``shuffle=True`` (training) each epoch shuffles the HDF5 chunks, lays out their
    windows chunk after chunk (in row order within a chunk: the order inside a batch does
    not change its mean loss) and cuts that every ``batch_size``. So a batch is a run of
    whole chunks, with at most a chunk's tail before and a chunk's head after; each
    stored row is read once per epoch (plus the ``length - 1`` rows past each cut), and
    the windows of an epoch are every window, as with
    :class:`~activation_cache.data.ChunkShuffleSampler`. The
    batches go to the ranks in turn; where they do not divide evenly,
    ``drop_last=True`` drops the last ones, else the first ones are repeated.

    With ``shuffle=False`` (validation) the batches are :class:`ChunkShuffleBatches`': exactly
    those of a ``DataLoader(windows, batch_size, sampler=ChunkShuffleSampler(windows, shuffle=False))``.

    A ``DistributedSampler`` subclass, so Lightning leaves it in place under DDP and calls
    :meth:`set_epoch`. Other keywords as :class:`~activation_cache.data.ChunkShuffleSampler`'s (``seed``,
    ``num_replicas``, ``rank``, ``drop_last``).
    """

    def __init__(self, dataset, batch_size: int, **kwargs):
        super().__init__(dataset, batch_size, **kwargs)
        by_chunk = np.argsort(self.chunks, kind="stable")
        _, first = np.unique(self.chunks[by_chunk], return_index=True)
        self._chunk_windows = [w for w in np.split(by_chunk, first[1:]) if len(w)]  # each in index (row) order
        self._epoch_batches: tuple[int, list[np.ndarray]] | None = None

    def _batches(self) -> list[np.ndarray]:
        """This epoch's batches for this rank (computed once per epoch)."""
        if self._epoch_batches is not None and self._epoch_batches[0] == self.epoch:
            return self._epoch_batches[1]
        if not self.shuffle:
            mine = list(ChunkShuffleBatches.__iter__(self))
        else:
            rng = np.random.default_rng(self.seed + self.epoch)
            chunks = rng.permutation(len(self._chunk_windows))
            order = np.concatenate([self._chunk_windows[c] for c in chunks]) if len(chunks) else np.zeros(0, np.int64)
            every = [order[lo : lo + self.batch_size] for lo in range(0, len(order), self.batch_size)]
            extra = len(every) % self.num_replicas
            if extra and self.drop_last:
                every = every[: len(every) - extra]
            elif extra:
                every += every[: self.num_replicas - extra]
            mine = every[self.rank :: self.num_replicas]
        self._epoch_batches = (self.epoch, mine)
        return mine

    def __iter__(self) -> Iterator[RowPlan]:  # type: ignore[override]
        return iter(plan_rows(self.dataset, self._batches()))

    def __len__(self) -> int:
        return len(self._batches())


class WindowBatches(Dataset):
    """Item: a :class:`RowPlan` (or window indices ``[i, j, ...]``): the rows its windows lie in, read straight from the file.

    Returns ``{"rows": (R, F), "starts": int64 (B,), "length": int}``: the union of the
    windows' rows, as runs of consecutive rows (per store, in row order), in the store's own
    dtype (float16, bfloat16 or float32; float32 when stores of different dtypes meet in one
    batch), and the row of ``rows`` where window ``b`` starts; ``cut_windows(**item)`` gives
    the windows. The runs are read straight into the batch's array (:func:`read_runs`).
    """

    def __init__(self, windows: TokenWindows | ConcatDataset):
        self.windows = windows
        self.parts = _parts(windows)
        lengths = {p.length for p in self.parts}
        if len(lengths) != 1:
            raise ValueError(f"windows of one length only, got {sorted(lengths)}")
        self.length = lengths.pop()
        widths = {p.n_features for p in self.parts}
        if len(widths) != 1:
            raise ValueError(f"windows of one width only, got {sorted(widths)} features")
        self.n_features = widths.pop()

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, item: RowPlan | Sequence[int]) -> dict:
        plan = item if isinstance(item, RowPlan) else plan_rows(self.windows, [np.asarray(item, np.int64)])[0]
        rows = read_runs(self.parts, zip(plan.part, plan.lo, plan.hi, plan.at), plan.total, (self.n_features,))
        return {"rows": rows, "starts": torch.from_numpy(plan.starts), "length": self.length}


def read_runs(parts: Sequence, runs: Iterable[tuple[int, int, int, int]], total: int,
              row_shape: tuple[int, ...]) -> torch.Tensor:
    """Runs ``(part, lo, hi, at)`` of rows of several stores in one tensor (total, *row_shape): rows ``[lo, hi)``
    of ``parts[part]`` (``read_rows``, ``storage_dtype``, ``as_tensor``) at row ``at``, in the stores' own
    dtype, or float32 when stores of different storage dtypes meet."""
    runs = list(runs)
    dtypes = {parts[p].storage_dtype for p, *_ in runs}
    if len(dtypes) == 1:
        out = np.empty((total, *row_shape), dtypes.pop())
        for p, lo, hi, at in runs:
            parts[p].read_rows(lo, hi, out, at)
        return parts[runs[0][0]].as_tensor(out)
    rows = torch.zeros((total, *row_shape), dtype=torch.float32)  # their common values
    for p, lo, hi, at in runs:
        one = np.empty((hi - lo, *row_shape), parts[p].storage_dtype)
        parts[p].read_rows(lo, hi, one, 0)
        rows[at : at + hi - lo] = parts[p].as_tensor(one).float()
    return rows


def as_is(item):
    """A DataLoader's ``collate_fn`` for items that are batches of tensors already: the item itself."""
    return item


def cut_windows(rows: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """The windows of a :class:`WindowBatches` item: (R, F) rows, (B,) starts -> (B, length, F), rows' dtype."""
    index = starts.to(rows.device)[:, None] + torch.arange(int(length), device=rows.device)
    return rows[index]
