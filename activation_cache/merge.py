"""Merge extraction shards into one logical store with HDF5 virtual datasets.

The token-axis datasets (``/tokens``, ``/generated``, ``/hidden/*``) of the
merged file are views onto the shard files: nothing is copied, so merging
terabytes takes milliseconds. Source paths are stored relative to the merged
file, so the directory can be moved as a whole. Small per-sequence data
(``/offsets``, ``/meta``) is copied. The merged file records each shard's
identity (:func:`~activation_cache.schema.shard_record`); the reader refuses it
when a shard is missing beside it or is not the file it was merged from.
"""

from __future__ import annotations

import functools
import json
import operator
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from activation_cache import schema
from activation_cache.errors import InputError, option
from activation_cache.outputs import atomic_path
from activation_cache.reader import TrajectoryStore
from activation_cache.running_stats import create_slots, write_slot

#: Config keys that legitimately differ between shards of one extraction.
_SHARD_KEYS = ("shard_index", "n_prompts", "prompts_sha256")


def _identity(store: TrajectoryStore) -> dict:
    conf = {k: v for k, v in store.config.items() if k not in _SHARD_KEYS}
    return {"model": store.model, "revision": store.model_revision, "layers": store.layers,
            "d_model": store.d_model, "dtype": store.dtype, "config": conf}


def merge_shards(out: str | Path, shards: Sequence[str | Path], overwrite: bool = False) -> Path:
    """Write a virtual store at ``out`` that concatenates complete ``shards`` in shard order.

    Checks that the shards come from one extraction (same model, layers,
    config but for the shard index), that every index 0..N-1 is present
    once, and that each shard is complete. An existing ``out`` is refused
    unless ``overwrite``; everything is checked before anything is written,
    and the store is written under a unique temporary name beside ``out`` and
    renamed over it when complete, so a refused or failed merge leaves an
    existing ``out`` byte-identical.
    """
    out = Path(out)
    if not shards:
        raise InputError("merge needs at least one shard file")
    if out.is_dir():
        raise InputError(f"{out} is a directory, expected an .h5 file")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass {option('overwrite', True)} to replace it")
    if out.resolve() in {Path(p).resolve() for p in shards}:
        raise InputError(f"{out} is one of the shards; choose another output file")
    if not out.resolve().parent.is_dir():
        raise InputError(f"output directory does not exist: {out.resolve().parent}")
    stores = [TrajectoryStore(p) for p in shards]
    try:
        stores.sort(key=lambda s: int(s.config.get("shard_index", 0)))
        ref = _identity(stores[0])
        num = int(stores[0].config.get("num_shards", 1))
        for s in stores:
            if _identity(s) != ref:
                raise InputError(f"{s.path}: shard does not belong with {stores[0].path} (different model, layers or config)")
            if int(s.config.get("n_prompts", -1)) != s.n_sequences:
                raise InputError(f"{s.path}: shard incomplete ({s.n_sequences} of {s.config.get('n_prompts')} sequences); finish it by rerunning its command")
        indices = [int(s.config.get("shard_index", 0)) for s in stores]
        if indices != list(range(num)):
            raise InputError(f"merge needs shards 0..{num - 1} exactly once, got indices {indices}")
        _write_virtual(out, stores)
    finally:
        for s in stores:
            s.close()
    return out


def _write_virtual(out: Path, stores: list[TrajectoryStore]) -> None:
    with atomic_path(out) as tmp:
        _write_virtual_file(tmp, out, stores)


def _write_virtual_file(tmp: Path, out: Path, stores: list[TrajectoryStore]) -> None:
    n_tok = [s.n_tokens for s in stores]
    starts = np.concatenate([[0], np.cumsum(n_tok)])
    first = stores[0]
    with h5py.File(tmp, "w", libver="latest") as f:
        def virtual(name: str, row_shape: tuple[int, ...], dtype) -> None:
            layout = h5py.VirtualLayout(shape=(int(starts[-1]), *row_shape), dtype=dtype)
            for s, a, b in zip(stores, starts[:-1], starts[1:]):
                if b > a:
                    src = os.path.relpath(s.path.resolve(), out.resolve().parent)
                    layout[a:b] = h5py.VirtualSource(src, name, shape=s.h5[name].shape)[: b - a]
            ds = f.create_virtual_dataset(name, layout)
            for k, v in first.h5[name].attrs.items():  # e.g. hidden/<layer>'s dtype="bfloat16"
                ds.attrs[k] = v

        virtual("tokens", (), np.int32)
        virtual("generated", (), bool)
        for layer in first.layers:
            virtual(f"hidden/{layer}", (first.d_model,), first.h5[f"hidden/{layer}"].dtype)
        _merge_stats(f, stores, virtual)
        offsets = np.concatenate([[0]] + [s.offsets[1:] + a for s, a in zip(stores, starts[:-1])])
        f.create_dataset("offsets", data=offsets.astype(np.int64))
        for field in dict.fromkeys(m for s in stores for m in s.meta_fields):
            values = [v for s in stores for v in (s.meta_column(field) if field in s.meta_fields else [""] * len(s))]
            f.create_dataset(f"meta/{field}", data=np.array(values, dtype=object), dtype=schema.STR_DTYPE)
        if "tokenizer" in first.h5:
            f.create_dataset("tokenizer", data=first.h5["tokenizer"][()])
        for k, v in first.h5.attrs.items():
            f.attrs[k] = v
        config = dict(first.config)
        for k in _SHARD_KEYS:
            config.pop(k, None)
        config["merged_from"] = [os.path.relpath(s.path.resolve(), out.resolve().parent) for s in stores]
        config["n_prompts"] = int(len(offsets) - 1)
        f.attrs["config_json"] = json.dumps(config, sort_keys=True)
        # what the reader checks each shard against (schema.shard_record), so a moved, replaced
        # or shrunken shard is refused rather than read as fill values or another file's data
        f.attrs["merged_shards"] = json.dumps([{"path": p, **schema.shard_record(s.h5)}
                                               for p, s in zip(config["merged_from"], stores)])
        f.attrs["n_committed"] = np.int64(len(offsets) - 1)


def _merge_stats(f: h5py.File, stores: list[TrajectoryStore], virtual) -> None:
    """The shards' running statistics combined in shard order, and their row norms as views;
    left out when a shard has none (written before they existed)."""
    first = stores[0]
    stats = {n: [s.layer_stats(n) for s in stores] for n in first.layers}
    if any(st is None for per in stats.values() for st in per) or any(f"norms/{n}" not in s.h5
                                                                      for s in stores for n in first.layers):
        return
    create_slots(f, first.layers, first.d_model)
    write_slot(f, 0, {n: functools.reduce(operator.add, per) for n, per in stats.items()},
               sum(s.n_sequences for s in stores))
    for n in first.layers:
        virtual(f"norms/{n}", (), np.float32)
