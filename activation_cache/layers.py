"""One vocabulary for layers, parsed in one place.

A layer is named as the store names its dataset: ``"embed"`` (the embedding
output) or the decimal index of a decoder block (``"0"`` .. ``"N-1"``: the
residual stream after that block). Every command, data module, checkpoint
hyperparameter, steering vector and reader takes a *layer spec* and turns it
into these names with :func:`parse_layers`:

=================  ===================================================
spec               layers (a model with N = 30 blocks)
=================  ===================================================
``"all"``          every block, 0..29
``"middle"``       block N // 2 (15)
``"embed"``        the embedding output
``"15"``           block 15
``"-1"``           the last block (29); negatives count from the end
``"10-12"``        blocks 10, 11, 12 (``"2--1"``: block 2 to the last)
``"embed,0,15"``   comma lists of any of the above
``15``, ``[10, 15]``  ints and lists of ints or names, from Python
=================  ===================================================

:func:`layer_spec` writes names back as the canonical string (``"10,15"``) that
checkpoints and configs record; :func:`block_indices` turns names into ints for
code that hooks decoder blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from activation_cache.errors import InputError, option
from activation_cache.schema import EMBED

__all__ = ["EMBED", "LayerSpec", "block_indices", "layer_spec", "parse_layers", "select_layers", "spec_names"]

#: What :func:`parse_layers` accepts.
LayerSpec = str | int | Iterable[str | int]

_RANGE = re.compile(r"(-?\d+)(?:-(-?\d+))?")


def _index(i: int, n_layers: int) -> int:
    j = i + n_layers if i < 0 else i
    if not 0 <= j < n_layers:
        raise InputError(f"unknown layer {i}: the model has layers 0..{n_layers - 1} (and '{EMBED}')")
    return j


def _parts(spec: LayerSpec) -> list[str]:
    if isinstance(spec, bool):
        raise InputError(f"layer {spec!r} is not a layer spec: use 'all', 'middle', 'embed', indices or ranges")
    if isinstance(spec, (int, np.integer)):
        return [str(int(spec))]
    if isinstance(spec, str):
        return [p.strip() for p in spec.split(",")]
    parts = []
    for x in spec:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer, str)):
            raise InputError(f"layer {x!r} is not a layer: use block indices or names like 'embed'")
        parts.append(str(int(x)) if not isinstance(x, str) else x.strip())
    return parts


def parse_layers(spec: LayerSpec, n_layers: int, *, embed: bool = False, sort: bool = True) -> list[str]:
    """Layer names (``"embed"``, ``"0"`` ..) selected by ``spec`` (module docstring) in a model of ``n_layers`` blocks.

    Args:
        embed: also select the embedding output (``--embed``).
        sort: ``True``: embed first, then blocks ascending (the store's layout);
            ``False``: in the order given (features concatenated in that order).

    Returns:
        Names without duplicates.

    Raises:
        InputError: an unknown layer, an empty range or a spec that selects nothing,
        naming the entry.
    """
    names: list[str] = [EMBED] if embed else []
    for part in _parts(spec):
        if not part:
            continue
        if part == "all":
            names += [str(i) for i in range(n_layers)]
        elif part == "middle":
            names.append(str(n_layers // 2))
        elif part == EMBED:
            names.append(EMBED)
        else:
            m = _RANGE.fullmatch(part)
            if not m:
                raise InputError(f"bad {option('layers')} entry {part!r}: use 'all', 'middle', 'embed', indices "
                                 "or ranges like 3-7")
            # Negative ends count from the last layer, so "2--1" is layer 2 to the last one.
            lo, hi = (_index(int(v), n_layers) for v in (m[1], m[2] or m[1]))
            if lo > hi:
                raise InputError(f"bad {option('layers')} range {part!r}: it selects layers {lo}..{hi}, which is empty")
            names += [str(j) for j in range(lo, hi + 1)]
    out = list(dict.fromkeys(names))
    if not out:
        raise InputError(f"{option('layers')} {spec!r} selects no layer")
    return sorted(out, key=lambda n: -1 if n == EMBED else int(n)) if sort else out


def select_layers(spec: LayerSpec, n_layers: int, available: Sequence[str], where: str = "the store",
                  sort: bool = False) -> list[str]:
    """:func:`parse_layers`, then check that ``available`` (a store's layers) holds every one."""
    names = parse_layers(spec, n_layers, sort=sort)
    missing = [n for n in names if n not in available]
    if missing:
        raise InputError(f"layer(s) {', '.join(missing)} not in {where} (it has {', '.join(available)})")
    return names


def layer_spec(names: Iterable[str | int]) -> str:
    """The canonical string of layer names, ``"10,15"`` (what checkpoints and configs record)."""
    return ",".join(str(n) for n in names)


def spec_names(text: str) -> list[str]:
    """The names in a canonical string written by :func:`layer_spec` (``"10,15"`` -> ``["10", "15"]``; ``""`` -> [])."""
    return [x for x in str(text).split(",") if x]


def block_indices(names: Iterable[str]) -> list[int]:
    """Decoder-block indices of layer names; InputError for ``embed`` (no block to hook)."""
    names = list(names)
    if EMBED in names:
        raise InputError(f"layer '{EMBED}' is not a decoder block: steering and block hooks need block indices")
    return [int(n) for n in names]
