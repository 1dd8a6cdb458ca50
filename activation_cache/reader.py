"""Read a trajectory store: per-sequence tokens, hidden states, metadata, text.

Opens in SWMR mode, so a store that is still being written (or whose writer
crashed) can be read: only committed sequences are visible, and
:meth:`TrajectoryStore.refresh` picks up newly committed ones.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np

from activation_cache import schema
from activation_cache.errors import InputError
from activation_cache.running_stats import RowStats, committed_slot, read_slot


class TrajectoryStore:
    """A read-only view of one store (a single file, or a merged virtual store).

    Sequence ``s`` covers token rows ``offsets[s]:offsets[s+1]``. Hidden states
    are returned as stored (float16 or float32), shape (T, D); a bfloat16
    store's come back as exact float32 (``read_dtype``).

    ``model_dtype`` and ``device`` say how the model ran (``None`` for
    stores written before format version 2); ``dtype_choice`` why the store
    holds ``dtype`` (what ``--dtype auto`` chose; ``None`` for older stores).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.h5: h5py.File = schema.open_h5(self.path, "r")
        try:
            schema.check_is_store(self.h5, self.path)
            attrs = self.h5.attrs
            self.model: str = schema.attr_str(attrs["model"])
            self.model_revision: str = schema.attr_str(attrs["model_revision"])
            self.d_model: int = int(attrs["d_model"])
            self.n_model_layers: int = int(attrs["n_model_layers"])
            self.layers: list[str] = json.loads(attrs["layers"])
            self.dtype: str = schema.attr_str(attrs["dtype"])
            if self.dtype not in schema.HIDDEN_DTYPES:
                raise InputError(f"{self.path}: unknown storage dtype {self.dtype!r} (a newer toolkit's store?)")
            self.model_dtype: str | None = schema.attr_str(attrs["model_dtype"]) if "model_dtype" in attrs else None
            self.device: str | None = schema.attr_str(attrs["device"]) if "device" in attrs else None
            self.dtype_choice: str | None = (schema.attr_str(attrs["dtype_choice"]) if "dtype_choice" in attrs
                                             else None)
            self.config: dict[str, Any] = schema.read_config(self.h5)
            self._check_shards()
            self.refresh()
            self._check_tokenizer_record()
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            self.h5.close()
            if isinstance(e, InputError):
                raise
            reason = " ".join(str(e).split()) or type(e).__name__
            raise InputError(f"{self.path}: corrupt or truncated store: {reason}") from None
        except BaseException:
            self.h5.close()
            raise

    # --------------------------------------------------------------- summary
    def refresh(self) -> int:
        """Re-read the commit mark (for stores still being written); returns n_sequences."""
        if hasattr(self, "n_sequences"):
            # SWMR refreshes datasets (Dataset.refresh) but not attributes, and the
            # commit mark n_committed is a root attribute: reopen the file to see it.
            self.h5.close()
            self.h5 = schema.open_h5(self.path, "r")
        self.n_sequences = int(self.h5.attrs["n_committed"])
        if self.n_sequences < 0:
            raise InputError(f"{self.path}: corrupt store: n_committed is {self.n_sequences}")
        self.offsets: np.ndarray = self.h5["offsets"][: self.n_sequences + 1].astype(np.int64)
        schema.check_offsets(self.offsets, self.h5, self.path)
        self.n_tokens = int(self.offsets[-1])
        return self.n_sequences

    def _check_tokenizer_record(self) -> None:
        """A cheap look at ``/tokenizer`` (one JSON object as UTF-8 bytes); :attr:`tokenizer` parses it."""
        if "tokenizer" not in self.h5:
            return
        ds = self.h5["tokenizer"]
        if ds.ndim != 1 or ds.dtype != np.uint8 or ds.shape[0] < 2 or (ds[0], ds[-1]) != (ord("{"), ord("}")):
            raise InputError(f"{self.path}: corrupt /tokenizer record (not a tokenizer's JSON)")

    def _check_shards(self) -> None:
        """A merged store opens only if each shard is beside it and is the file it was merged from."""
        merged = self.config.get("merged_from")
        if not merged:
            return
        # HDF5 looks for a shard beside the merged file first and then in the working
        # directory: a shard missing here would be read from there, or as fill values.
        base = self.path.absolute().parent
        attrs = self.h5.attrs
        records = json.loads(attrs["merged_shards"]) if "merged_shards" in attrs else [{"path": p} for p in merged]
        for rec in records:
            shard = base / rec["path"]
            if not shard.is_file():
                raise InputError(f"{self.path}: its shard {rec['path']} is missing (looked in {base}); "
                                 "put the shard back beside the merged file, or merge again")
            if len(rec) == 1:
                continue  # merged before shard records existed: presence is all we can check
            with schema.open_h5(shard, "r") as g:
                schema.check_is_store(g, shard)
                now = schema.shard_record(g)
            differ = [k for k in now if rec.get(k) != now[k]]
            if differ:
                raise InputError(f"{self.path}: shard {shard} is not the file this store was merged from "
                                 f"(differs in {', '.join(differ)}); merge the shards again")

    def __len__(self) -> int:
        return self.n_sequences

    @property
    def attrs(self) -> dict[str, Any]:
        """All root attributes as Python values."""
        return {k: (schema.attr_str(v) if isinstance(v, (str, bytes)) else v) for k, v in self.h5.attrs.items()}

    @property
    def meta_fields(self) -> list[str]:
        return list(self.h5["meta"].keys()) if "meta" in self.h5 else []

    def lengths(self) -> np.ndarray:
        """Tokens per sequence, int64 (S,)."""
        return np.diff(self.offsets)

    # ------------------------------------------------------------- sequences
    def _rows(self, s: int) -> slice:
        if not -self.n_sequences <= s < self.n_sequences:
            raise IndexError(f"sequence {s} out of range: store has {self.n_sequences} sequences")
        s %= self.n_sequences
        return slice(int(self.offsets[s]), int(self.offsets[s + 1]))

    def check_layer(self, layer: int | str) -> str:
        """Canonical name of ``layer``; InputError if the store does not hold it."""
        name = schema.layer_name(layer)
        if name not in self.layers:
            raise InputError(f"{self.path}: layer {name!r} not in store (has {', '.join(self.layers)})")
        return name

    def tokens(self, s: int) -> np.ndarray:
        """Token ids of sequence ``s``, int32 (T,)."""
        return self.h5["tokens"][self._rows(s)]

    def generated(self, s: int) -> np.ndarray:
        """Generated-token mask of sequence ``s``, bool (T,)."""
        return self.h5["generated"][self._rows(s)]

    @property
    def read_dtype(self) -> np.dtype:
        """The numpy dtype hidden states are returned in (float32 for a bfloat16 store)."""
        return np.dtype(schema.READ_DTYPES[self.dtype])

    def hidden_dataset(self, layer: int | str):
        """The flat ``/hidden/<layer>`` dataset, (N, D), sliceable; reads as :attr:`read_dtype`."""
        return schema.hidden_dataset(self.h5, self.check_layer(layer))

    def hidden(self, s: int, layer: int | str) -> np.ndarray:
        """Hidden states of sequence ``s`` at ``layer``, (T, D) in :attr:`read_dtype`."""
        return self.hidden_dataset(layer)[self._rows(s)]

    def hidden_layers(self, s: int, layers: Iterable[int | str] | None = None) -> np.ndarray:
        """Hidden states of sequence ``s`` at several layers, (n_layers, T, D)."""
        names = [self.check_layer(x) for x in (self.layers if layers is None else layers)]
        rows = self._rows(s)
        return np.stack([self.hidden_dataset(n)[rows] for n in names])

    def hidden_rows(self, layer: int | str, start: int, stop: int) -> np.ndarray:
        """Token rows ``start:stop`` of the flat ``/hidden/<layer>`` dataset, (stop-start, D)."""
        return self.hidden_dataset(layer)[start:stop]

    # ------------------------------------------------------------ statistics
    def layer_stats(self, layer: int | str) -> RowStats | None:
        """Count, mean and M2 (float64, per feature) of all committed rows of ``layer``, as the writer
        kept them (:mod:`activation_cache.running_stats`): a read of two (D,) rows.

        ``None`` for a store written before they existed, or when the writer has committed
        twice since :meth:`refresh` (call it and ask again).
        """
        name = self.check_layer(layer)
        if f"stats/{name}/mean" not in self.h5:
            return None
        s = committed_slot(self.h5, self.n_sequences)
        if s is None:
            return None
        stats = read_slot(self.h5, [name], s)[name]
        marks = self.h5["stats/n_committed"]
        marks.refresh()  # a live writer may have reused the slot while we read it
        return stats if int(marks[s]) == self.n_sequences else None

    def norm_quantiles(self, layer: int | str, q=(0.01, 0.5, 0.99)) -> np.ndarray | None:
        """Quantiles ``q`` of the L2 norms of the committed rows of ``layer``, float64 (len(q),)
        (one read of 4 bytes a row); ``None`` for a store without norms or rows."""
        name = self.check_layer(layer)
        if f"norms/{name}" not in self.h5 or not self.n_tokens:
            return None
        return np.quantile(self.h5[f"norms/{name}"][: self.n_tokens].astype(np.float64), q)

    def stats_lines(self) -> list[str]:
        """One line per layer summarising :meth:`layer_stats` and :meth:`norm_quantiles` (what ``info`` prints);
        empty for a store without them."""
        lines = []
        for name in self.layers:
            st, q = self.layer_stats(name), self.norm_quantiles(name)
            if st is None or q is None:
                return []
            lines.append(f"layer {name}: feature means {st.mean.mean():+.4g} on average (|max| "
                         f"{np.abs(st.mean).max():.4g}), feature std {np.sqrt(st.var.mean()):.4g} (RMS); "
                         f"row norm p1/p50/p99 {q[0]:.4g}/{q[1]:.4g}/{q[2]:.4g}")
        return lines

    def meta(self, s: int) -> dict[str, str]:
        """Metadata of sequence ``s`` as {field: str}."""
        if not -self.n_sequences <= s < self.n_sequences:
            raise IndexError(f"sequence {s} out of range: store has {self.n_sequences} sequences")
        s %= self.n_sequences
        return {k: _as_str(self.h5[f"meta/{k}"][s]) for k in self.meta_fields}

    def meta_column(self, field: str) -> list[str]:
        """One metadata field for all committed sequences."""
        if field not in self.meta_fields:
            raise InputError(f"{self.path}: no metadata field {field!r} (has {', '.join(self.meta_fields)})")
        return [_as_str(v) for v in self.h5[f"meta/{field}"][: self.n_sequences]]

    # ------------------------------------------------------------------ text
    @cached_property
    def tokenizer(self):
        """A ``tokenizers.Tokenizer`` rebuilt from the stored JSON, or None."""
        if "tokenizer" not in self.h5:
            return None
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_str(self.h5["tokenizer"][()].tobytes().decode())
        except Exception as e:  # tokenizers raises its own Exception type
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise InputError(f"{self.path}: corrupt /tokenizer record ({reason})") from None

    def decode_tokens(self, s: int, tokenizer: Any = None) -> list[str]:
        """Each token of sequence ``s`` as text (for trajectory views)."""
        ids = self.tokens(s).tolist()
        tok = tokenizer or self.tokenizer
        if tok is None:
            return [str(i) for i in ids]
        return [tok.decode([i]) for i in ids]

    def text(self, s: int, tokenizer: Any = None) -> str:
        """Decoded text of sequence ``s`` (stored tokenizer unless one is given)."""
        tok = tokenizer or self.tokenizer
        if tok is None:
            raise InputError(f"{self.path}: store has no tokenizer; pass tokenizer=")
        return tok.decode(self.tokens(s).tolist(), skip_special_tokens=False)

    # ------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> "TrajectoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TrajectoryStore({str(self.path)!r}, model={self.model!r}, sequences={self.n_sequences}, "
            f"tokens={self.n_tokens}, layers={len(self.layers)}, d_model={self.d_model}, dtype={self.dtype})"
        )


def _as_str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def open_store(path: str | Path) -> TrajectoryStore:
    """Open a trajectory store for reading (see :class:`TrajectoryStore`)."""
    return TrajectoryStore(path)
