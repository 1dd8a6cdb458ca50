"""Blocks: named sets of (layer, position) cells relative to an anchor token, and datasets of them.

A block is declared once and applied at many anchors T (docs/architecture.md §3.2)::

    prefix = BlockSpec(layers="1-28", start=None, stop=0)   # tokens 0..T-1, layers 1..28
    ahead3 = BlockSpec(layers="-1", start=3, stop=4)        # token T+3, last layer

Positions are offsets from T, half-open ``[start, stop)``; ``start=None`` means
"from the first token of the sequence", capped to the last ``max_positions``
positions so a long prefix cannot blow up a batch.

Anchors (which T of which sequence) are chosen once for a *set* of blocks, so
that the codes of every block in the set describe the same (sequence, T) rows
and can be compared by mutual information.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from activation_cache import schema
from activation_cache.errors import InputError
from activation_cache.layers import parse_layers
from activation_cache.reader import TrajectoryStore


@dataclass(frozen=True)
class BlockSpec:
    """A block of cells around anchor T.

    Attributes:
        layers: layer spec as in ``ret-extract --layers``: ``"all"``, ``"-1"`` (last),
            ``"1-28"``, ``"0,5,10"``, ``"embed"``. Resolved against the store.
        start: first position, as an offset from T (``None``: the sequence start).
        stop: one past the last position, as an offset from T (``0``: up to T-1).
        max_positions: keep at most this many positions (the last ones).
    """

    layers: str = "-1"
    start: int | None = None
    stop: int = 0
    max_positions: int = 64

    def __post_init__(self):
        if self.start is not None and self.start >= self.stop:
            raise InputError(f"block positions [{self.start}, {self.stop}) are empty: start must be < stop")
        if self.max_positions < 1:
            raise InputError(f"block max_positions must be >= 1, got {self.max_positions}")

    def layer_names(self, store: TrajectoryStore) -> list[str]:
        names = parse_layers(self.layers, store.n_model_layers)
        missing = [n for n in names if n not in store.layers]
        if missing:
            raise InputError(f"{store.path}: block layer(s) {', '.join(missing)} not in the store "
                             f"(it has {', '.join(store.layers)})")
        return names

    def positions(self, anchor: int) -> tuple[int, int]:
        """Absolute token range [lo, hi) of the block at ``anchor`` (lo may be < 0 = does not fit)."""
        hi = anchor + self.stop
        lo = 0 if self.start is None else anchor + self.start
        return max(lo, hi - self.max_positions), hi

    def fits(self, anchor: np.ndarray, length: np.ndarray) -> np.ndarray:
        """bool: the block lies inside a sequence of ``length`` tokens and is not empty."""
        hi = anchor + self.stop
        lo = np.zeros_like(anchor) if self.start is None else anchor + self.start
        return (lo >= 0) & (hi <= length) & (hi > lo)

    def to_dict(self) -> dict:
        return asdict(self)


def block_anchors(
    store: TrajectoryStore,
    blocks: Sequence[BlockSpec],
    anchor: str = "prompt_end",
    stride: int = 1,
    sequences: Sequence[int] | None = None,
) -> np.ndarray:
    """(sequence, T) rows at which every block in ``blocks`` fits, int64 (n, 2), sorted.

    ``anchor``:
        ``"prompt_end"`` — T = index of the first generated token (= prompt length);
        ``"all"`` — every T (every ``stride``-th);
        ``"meta:<field>"`` — T read from an integer metadata field;
        an integer string — the same absolute T in every sequence.
    """
    seqs = np.arange(store.n_sequences) if sequences is None else np.asarray(sequences, np.int64)
    lengths = store.lengths()
    rows: list[np.ndarray] = []
    if anchor == "all":
        for s in seqs:
            t = np.arange(0, lengths[s] + 1, stride, dtype=np.int64)
            rows.append(np.stack([np.full_like(t, s), t], 1))
    else:
        if anchor == "prompt_end":
            gen = store.h5["generated"]
            t = np.array([int((~gen[store.offsets[s]: store.offsets[s + 1]]).sum()) for s in seqs], np.int64)
        elif anchor.startswith("meta:"):
            field = anchor[5:]
            if field not in store.meta_fields:
                raise InputError(f"{store.path}: anchor field /meta/{field} not in the store (it has {', '.join(store.meta_fields)})")
            col = store.meta_column(field)
            try:
                t = np.array([int(col[s]) for s in seqs], np.int64)
            except ValueError:
                raise InputError(f"{store.path}: /meta/{field} must hold integer token positions") from None
        else:
            try:
                t = np.full(len(seqs), int(anchor), np.int64)
            except ValueError:
                raise InputError(f"unknown anchor {anchor!r}: use 'prompt_end', 'all', 'meta:<field>' or a token index") from None
        rows.append(np.stack([seqs, t], 1))
    out = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
    ok = np.ones(len(out), bool)
    for b in blocks:
        ok &= b.fits(out[:, 1], lengths[out[:, 0]])
    return out[ok]


def cells_index(spec: BlockSpec, n_layers: int, anchor: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Layer index and relative position of every cell (layer-major), plus the absolute range."""
    lo, hi = spec.positions(anchor)
    pos = np.arange(lo, hi) - anchor
    layer = np.repeat(np.arange(n_layers), len(pos))
    return layer, np.tile(pos, n_layers), lo, hi


class StoreBlocks(Dataset):
    """One block per anchor from a trajectory store.

    Item ``i`` is a dict: ``cells`` float32 (n_cells, D) (layer-major: all
    positions of the first layer, then the next layer...), ``layer`` int64
    (n_cells,) index into the block's layers, ``pos`` int64 (n_cells,) offset
    from the anchor, ``index`` int (the row in ``anchors``). Cells of different
    anchors may differ in number; :func:`collate_cells` pads them.

    Whole sequences are read (all block layers at once) into a small LRU
    cache; :meth:`chunk_of` returns the sequence of each anchor so that
    :class:`activation_cache.data.ChunkShuffleSampler` keeps reads sequence-local.
    """

    def __init__(self, path: str | Path, spec: BlockSpec, anchors: np.ndarray, cache_sequences: int = 32):
        self.path = Path(path)
        self.spec = spec
        with TrajectoryStore(self.path) as store:
            self.layers = spec.layer_names(store)
            self.offsets = store.offsets.copy()
            self.d_model = store.d_model
            self.model = store.model
            self.stored_dtype = store.dtype
        self.anchors = np.asarray(anchors, np.int64).reshape(-1, 2)
        self.cache_sequences = cache_sequences
        self._file = schema.ProcessFile(self.path)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.anchors)

    def _sequence(self, s: int) -> np.ndarray:
        """(n_layers, T, D) hidden states of sequence ``s`` for the block's layers."""
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        a, b = int(self.offsets[s]), int(self.offsets[s + 1])
        x = np.stack([schema.hidden_dataset(self._file.get(), n)[a:b] for n in self.layers])
        self._cache[s] = x
        if len(self._cache) > self.cache_sequences:
            self._cache.popitem(last=False)
        return x

    def __getitem__(self, i: int) -> dict:
        s, t = (int(v) for v in self.anchors[i])
        layer, pos, lo, hi = cells_index(self.spec, len(self.layers), t)
        x = self._sequence(s)[:, lo:hi].reshape(-1, self.d_model)
        return {"cells": torch.from_numpy(x.astype(np.float32)), "layer": torch.from_numpy(layer),
                "pos": torch.from_numpy(pos), "index": i}

    def chunk_of(self) -> np.ndarray:
        return self.anchors[:, 0].copy()

    @property
    def storage_dtype(self) -> np.dtype:
        """numpy dtype of the stored values (a bfloat16 store's bit patterns are 16-bit integers)."""
        return np.dtype(schema.HIDDEN_DTYPES[self.stored_dtype])

    def as_tensor(self, stored: np.ndarray) -> torch.Tensor:
        """Rows as stored -> a tensor of their values without copying (bfloat16 exact)."""
        return schema.stored_tensor(stored, self.stored_dtype)

    def read_rows(self, lo: int, hi: int, out: np.ndarray, at: int) -> None:
        """Token rows ``[lo, hi)`` of the block's layers, as stored, into ``out[at : at + hi - lo]``
        ((R, n_layers, D) of :attr:`storage_dtype`; :meth:`schema.ProcessFile.read_rows`)."""
        self._file.read_rows([f"hidden/{n}" for n in self.layers], lo, hi, out, at)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # the file handle drops itself (schema.ProcessFile)
        return state


class TensorBlocks(Dataset):
    """Blocks held in memory with a fixed cell layout, e.g. synthetic data.

    ``cells`` float (N, n_cells, D); ``layer`` and ``pos`` int (n_cells,) shared by all items.
    """

    def __init__(self, cells: torch.Tensor, layer: torch.Tensor, pos: torch.Tensor):
        if cells.ndim != 3 or layer.shape != (cells.shape[1],) or pos.shape != (cells.shape[1],):
            raise ValueError(f"cells must be (N, n_cells, D) with layer/pos (n_cells,), got {tuple(cells.shape)}, "
                             f"{tuple(layer.shape)}, {tuple(pos.shape)}")
        self.cells, self.layer, self.pos = cells.float(), layer.long(), pos.long()

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i: int) -> dict:
        return {"cells": self.cells[i], "layer": self.layer, "pos": self.pos, "index": i}

    def chunk_of(self) -> np.ndarray:
        return np.arange(len(self.cells)) // 256


def collate_cells(items: list[dict]) -> dict:
    """Pad a list of blocks to the longest: ``cells`` (B, N, D), ``layer``/``pos`` (B, N),
    ``mask`` bool (B, N) True on real cells, ``index`` (B,)."""
    n = max(len(it["layer"]) for it in items)
    B, D = len(items), items[0]["cells"].shape[-1]
    cells = torch.zeros(B, n, D)
    layer = torch.zeros(B, n, dtype=torch.long)
    pos = torch.zeros(B, n, dtype=torch.long)
    mask = torch.zeros(B, n, dtype=torch.bool)
    for b, it in enumerate(items):
        k = len(it["layer"])
        cells[b, :k], layer[b, :k], pos[b, :k], mask[b, :k] = it["cells"], it["layer"], it["pos"], True
    return {"cells": cells, "layer": layer, "pos": pos, "mask": mask,
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
