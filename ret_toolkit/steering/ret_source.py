"""Steering ingredients from a ``ret-macro`` / ``ret-demo`` output directory.

Such a directory holds ``ret_macro.ckpt`` (RET encoder + k-means centroids) and
``macrostates.h5`` (z and group per token of a store, whose path it records;
``ret-demo`` also keeps the store itself, ``trajectories.h5``). From it:

- :func:`find_outputs` — the three paths, checked;
- :func:`group_vector` — the steering vector of one group (mean hidden state of
  the group's tokens minus the overall mean, scaled to the median token norm,
  via :func:`ret_toolkit.steering.from_groups`), at the RET layer(s) or any
  layer the store holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from activation_cache.errors import InputError, option
from activation_cache.layers import LayerSpec, block_indices, select_layers
from activation_cache.reader import TrajectoryStore
from ret_toolkit.steering.construct import from_groups
from ret_toolkit.steering.vector import SteeringVector

__all__ = ["RETOutputs", "find_outputs", "group_vector"]


@dataclass(frozen=True)
class RETOutputs:
    """Paths of a RET macrostate run: checkpoint with centroids, macrostate file, trajectory store."""

    checkpoint: Path
    macro_file: Path
    store: Path


def find_outputs(directory: str | Path, *, store: str | Path | None = None) -> RETOutputs:
    """Resolve ``ret_macro.ckpt``, ``macrostates.h5`` and the store of a ret-macro / ret-demo directory.

    The store is ``store`` if given, else the path recorded in the macrostate
    file, else ``trajectories.h5`` next to it.

    Raises:
        InputError: a missing directory or file.
    """
    from ret_toolkit.macro.assign import open_macro

    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"RET output directory not found: {d} (run ret-demo or ret-macro first)")
    ckpt, macro = d / "ret_macro.ckpt", d / "macrostates.h5"
    for p in (ckpt, macro):
        if not p.is_file():
            raise InputError(f"{d}: no {p.name} (expected a ret-macro / ret-demo output directory)")
    if store is None:
        with open_macro(macro) as f:
            recorded = f.attrs.get("store")
        recorded = Path(recorded.decode() if isinstance(recorded, bytes) else str(recorded or ""))
        store = recorded if recorded.name and recorded.is_file() else d / "trajectories.h5"
    store = Path(store)
    if not store.is_file():
        raise InputError(f"trajectory store not found: {store} (pass {option('store')})")
    return RETOutputs(ckpt, macro, store)


def group_vector(outputs: RETOutputs | str | Path, group: int, layers: LayerSpec | None = None, *, model=None,
                 model_name: str | None = None, scale: str | None = "median",
                 exclude: Sequence[int] = ()) -> SteeringVector:
    """Steering vector toward macrostate ``group``: group mean minus overall mean per layer.

    Rows are every stored token except each sequence's first (an attention
    sink in many LMs, with a hidden-state norm ~100x the others, see
    :mod:`ret_toolkit.steering.construct`); groups are the macrostate file's.

    Args:
        outputs: :func:`find_outputs`, or the ret-macro / ret-demo directory to find them in.
        group: target group id.
        layers: layer spec of the decoder blocks to build it at (:mod:`activation_cache.layers`;
            default: the layers the RET checkpoint reads); each must be in the store.
        model, model_name: identity recorded in the manifest (default: the
            store's model name).
        exclude: store sequences to leave out, e.g. the prompts the vector will be
            evaluated on (recorded in the manifest's ``meta``).

    Raises:
        InputError: an unknown group, a layer the store lacks, a store / macro
            file mismatch.
    """
    from ret_toolkit.macro.assign import open_macro

    if not isinstance(outputs, RETOutputs):
        outputs = find_outputs(outputs)
    with open_macro(outputs.macro_file) as f:
        groups = f["group"][:] if "group" in f else None
        k = int(f.attrs.get("k", 0))
        reader_layers = str(f.attrs.get("layers", ""))
    if groups is None:
        raise InputError(f"{outputs.macro_file}: no /group dataset (run ret-macro to assign macrostates)")
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= group < max(k, 1):
        raise InputError(f"group {group!r} does not exist: the macrostates have groups 0..{k - 1}")
    with TrajectoryStore(outputs.store) as store:
        if store.n_tokens != len(groups):
            raise InputError(f"{outputs.store} has {store.n_tokens} tokens but {outputs.macro_file} has "
                             f"{len(groups)}: not the store these macrostates were made from")
        names = select_layers(reader_layers if layers is None else layers, store.n_model_layers, store.layers,
                              where=str(outputs.store), sort=True)
        hidden = {i: store.hidden_dataset(x) for i, x in zip(block_indices(names), names)}
        mask = np.ones(len(groups), bool)
        mask[store.offsets[:-1]] = False  # first token of every sequence
        left_out = sorted({int(s) for s in exclude})
        if left_out and not 0 <= left_out[0] <= left_out[-1] < store.n_sequences:
            raise InputError(f"{option('exclude')}: sequences must be in 0..{store.n_sequences - 1}, got {left_out}")
        for s in left_out:
            mask[store.offsets[s]: store.offsets[s + 1]] = False
        name = model_name if model_name is not None else (None if model is not None else store.model)
        try:
            vec = from_groups(hidden, groups.astype(np.int64), int(group), mask=mask, scale=scale, model=model,
                              model_name=name, meta={"macro_file": str(outputs.macro_file), "store": str(outputs.store),
                                    **({"excluded_sequences": left_out} if left_out else {})})
        except InputError as e:
            raise InputError(f"{outputs.store}: {e}") from None  # name the file the rows are in
    if model is None and not vec.n_layers:
        vec.n_layers = store.n_model_layers
    return vec
