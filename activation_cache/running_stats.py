"""Per-layer statistics of a store's rows, kept by the writer so standardisation is a read.

:class:`RowStats` is the count, mean and M2 (sum of squared deviations) of a set of rows,
per feature, in float64: computed for a batch on the device the rows come from
(:meth:`RowStats.of`), and combined with Chan et al.'s pairwise rule (``a + b``), which is
Welford's update for a whole batch at once; ``a - b`` removes rows again (the statistics of
a split are the store's less those of the other rows). Row norms (:func:`row_norms`,
float32) are stored per row, so quantiles of them are exact after a resume or a merge.

In the store (written by :class:`~activation_cache.writer.StoreWriter` at each commit)::

    /stats/n_committed     int64 (2,)      the n_committed each slot belongs to
    /stats/count           int64 (2,)      rows each slot covers
    /stats/<layer>/mean    float64 (2, D)
    /stats/<layer>/m2      float64 (2, D)
    /norms/<layer>         float32 (N,)    one L2 norm per token row

Two slots, written in turn: a commit writes the new totals into the slot the committed
state does not use, flushes, and only then moves ``n_committed``; the slot whose
``n_committed`` equals the file's is the committed one, so a crash at any point leaves
the totals of exactly the committed rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
import torch

__all__ = ["RowStats", "committed_slot", "create_slots", "read_slot", "row_norms", "write_slot"]


@dataclass(frozen=True)
class RowStats:
    """Count, mean and M2 of rows, per feature: ``count`` int, ``mean`` and ``m2`` float64 (D,)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, d: int) -> "RowStats":
        return cls(0, np.zeros(d), np.zeros(d))

    @classmethod
    def of(cls, rows: torch.Tensor | np.ndarray) -> "RowStats":
        """The statistics of ``rows`` (T, D), any float dtype, computed in float64 where the rows are."""
        x = torch.as_tensor(rows)
        if x.shape[0] == 0:
            return cls.empty(x.shape[1])
        var, mean = torch.var_mean(x.to(torch.float64), dim=0, correction=0)
        return cls(int(x.shape[0]), mean.cpu().numpy(), (var * x.shape[0]).cpu().numpy())

    @property
    def var(self) -> np.ndarray:
        """Population variance per feature, float64 (D,) (NaN for no rows)."""
        return self.m2 / self.count if self.count else np.full_like(self.mean, np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.var, 0.0))

    def __add__(self, other: "RowStats") -> "RowStats":
        """The statistics of both sets of rows (Chan, Golub & LeVeque's pairwise update)."""
        if not other.count:
            return self
        if not self.count:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RowStats(n, mean, m2)

    def __sub__(self, other: "RowStats") -> "RowStats":
        """The statistics of these rows without ``other``'s (which must be among them)."""
        if not other.count:
            return self
        n = self.count - other.count
        if n < 0:
            raise ValueError(f"cannot remove {other.count} rows from {self.count}")
        if n == 0:
            return RowStats.empty(len(self.mean))
        mean = (self.mean * self.count - other.mean * other.count) / n
        delta = other.mean - mean
        m2 = np.maximum(self.m2 - other.m2 - delta**2 * (n * other.count / self.count), 0.0)
        return RowStats(n, mean, m2)


def row_norms(rows: torch.Tensor | np.ndarray) -> torch.Tensor:
    """L2 norm of each row of ``rows`` (T, D), float32 (T,), computed where the rows are."""
    x = torch.as_tensor(rows)
    return torch.linalg.vector_norm(x.to(torch.float32), dim=1)


# ---- the two slots in a store (module docstring); ``f`` is an h5py File or a mapping of its datasets


def create_slots(f: h5py.File, layers: list[str], d_model: int) -> None:
    """``/stats`` of an empty store: slot 0 holds the statistics of no rows."""
    f.create_dataset("stats/n_committed", data=np.array([0, -1], np.int64))
    f.create_dataset("stats/count", data=np.zeros(2, np.int64))
    for name in layers:
        f.create_dataset(f"stats/{name}/mean", data=np.zeros((2, d_model)))
        f.create_dataset(f"stats/{name}/m2", data=np.zeros((2, d_model)))


def write_slot(f, slot: int, totals: dict[str, RowStats], n_committed: int) -> None:
    """The totals of every layer into ``slot``, its ``n_committed`` last."""
    for name, st in totals.items():
        f[f"stats/{name}/mean"][slot] = st.mean
        f[f"stats/{name}/m2"][slot] = st.m2
    f["stats/count"][slot] = next(iter(totals.values())).count if totals else 0
    f["stats/n_committed"][slot] = n_committed


def committed_slot(f, n_committed: int) -> int | None:
    """The slot that belongs to ``n_committed`` (None: none does)."""
    slot = np.flatnonzero(f["stats/n_committed"][:] == n_committed)
    return int(slot[0]) if len(slot) else None


def read_slot(f, layers: list[str], slot: int) -> dict[str, RowStats]:
    count = int(f["stats/count"][slot])
    return {n: RowStats(count, f[f"stats/{n}/mean"][slot], f[f"stats/{n}/m2"][slot]) for n in layers}
