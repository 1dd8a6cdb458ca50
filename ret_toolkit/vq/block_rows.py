"""VQ batches sent as the rows their blocks lie in; the cells are gathered where the model runs.

A :class:`~ret_toolkit.vq.blocks.StoreBlocks` item copies its block's cells to float32, and
:func:`~ret_toolkit.vq.blocks.collate_cells` copies them again into a padded batch: the
overlapping blocks of nearby anchors copy each row many times. :class:`BlockRows` sends
instead the rows the batch's blocks cover, each once, in the store's own dtype, as
``(R, n_layers, D)``, with the row and layer of every cell; :func:`gather_cells` makes the
padded ``(B, N, D)`` cells from them with one gather on the model's device, equal to
``collate_cells``' (zeros where ``mask`` is False).
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from activation_cache.window_batches import read_runs
from ret_toolkit.vq.blocks import StoreBlocks, cells_index

__all__ = ["BlockRows", "gather_cells"]


class BlockRows(Dataset):
    """Item ``[i, j, ...]`` (anchor indices of a :class:`StoreBlocks` or a concatenation of them): one batch.

    Returns ``{"rows": (R, n_layers, D) as stored (float32 where stores of different dtypes meet), "row", "layer", "pos": int64 (B, N), "mask": bool (B, N),
    "index": int64 (B,)}``: the union of the blocks' token rows (runs of consecutive rows per store,
    read once per layer), and for each cell the row of ``rows`` it lies in, its layer index and
    position; ``layer``, ``pos``, ``mask`` and ``index`` are ``collate_cells``'.
    """

    def __init__(self, blocks: StoreBlocks | ConcatDataset):
        self.parts: list[StoreBlocks] = list(blocks.datasets) if isinstance(blocks, ConcatDataset) else [blocks]
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])
        first = self.parts[0]
        if any((p.spec, len(p.layers), p.d_model) != (first.spec, len(first.layers), first.d_model) for p in self.parts):
            raise ValueError("blocks of one spec, layer count and width only")
        self.n_layers, self.d_model = len(first.layers), first.d_model

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, indices: Sequence[int]) -> dict:
        idx = np.asarray(indices, np.int64).reshape(-1)
        part = np.searchsorted(self.bounds, idx, side="right") - 1
        local = idx - self.bounds[part]
        cells, spans = [], []
        for p, i in zip(part.tolist(), local.tolist()):
            ds = self.parts[p]
            s, t = (int(v) for v in ds.anchors[i])
            layer, pos, lo, hi = cells_index(ds.spec, self.n_layers, t)
            base = int(ds.offsets[s])
            cells.append((layer, pos, base + t + pos))  # each cell's token row in its store
            spans.append((p, base + lo, base + hi))
        runs = _runs(spans)  # (part, lo, hi, at), sorted by store and row
        total = runs[-1][3] + runs[-1][2] - runs[-1][1] if runs else 0
        rows = read_runs(self.parts, runs, total, (self.n_layers, self.d_model))
        n = max((len(c[0]) for c in cells), default=0)
        row, layer, pos = (np.zeros((len(idx), n), np.int64) for _ in range(3))
        mask = np.zeros((len(idx), n), bool)
        keys = [(p, lo) for p, lo, _, _ in runs]  # sorted
        for b, ((lay, ps, abs_rows), (p, lo, _)) in enumerate(zip(cells, spans)):
            k = len(lay)
            # the run holding this block: the last run of its store starting at or before the block's first row
            r = runs[bisect.bisect_right(keys, (p, lo)) - 1]
            row[b, :k] = r[3] + abs_rows - r[1]
            layer[b, :k], pos[b, :k], mask[b, :k] = lay, ps, True
        return {"rows": rows, "row": torch.from_numpy(row), "layer": torch.from_numpy(layer),
                "pos": torch.from_numpy(pos), "mask": torch.from_numpy(mask), "index": torch.from_numpy(local)}


def _runs(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Row ranges ``(store, lo, hi)`` merged where they overlap or touch: ``(store, lo, hi, at)`` with ``at`` the
    first row of each in the batch's array."""
    out: list[list[int]] = []
    for p, lo, hi in sorted(spans):
        if out and out[-1][0] == p and lo <= out[-1][2]:
            out[-1][2] = max(out[-1][2], hi)
        else:
            out.append([p, lo, hi])
    at, runs = 0, []
    for p, lo, hi in out:
        runs.append((p, lo, hi, at))
        at += hi - lo
    return runs


def gather_cells(batch: dict) -> torch.Tensor:
    """The padded cells (B, N, D) of a :class:`BlockRows` batch, float32, zeros where ``mask`` is False."""
    rows = batch["rows"]
    cells = rows[batch["row"].to(rows.device), batch["layer"].to(rows.device)].float()
    return cells.masked_fill(~batch["mask"].to(rows.device).unsqueeze(-1), 0.0)
