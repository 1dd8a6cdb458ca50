"""Add per-sequence columns to ``/meta`` of a finished store (labels known only after generation).

Extraction writes the input fields of every prompt to ``/meta``. Some metadata exists only
after the model has run -- e.g. whether a generated reply caved to the user -- so
:func:`add_meta` adds string columns ``/meta/<field>`` (S,) to a store whose extraction is
complete. The store layout is unchanged (docs/architecture.md §2: ``/meta/<field>`` is a (S,) string
dataset), so every reader sees the new columns like the extracted ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from activation_cache import schema
from activation_cache.errors import InputError
from activation_cache.lock import StoreLock

__all__ = ["add_meta"]


def add_meta(path: str | Path, columns: Mapping[str, Sequence[str]], replace: bool = False) -> list[str]:
    """Write ``columns`` ({field: one string per committed sequence}) to ``/meta`` of the store.

    Takes the store's writer lock, so it cannot race a running extraction. Fields written
    by the extraction itself (its ``meta_fields``: ``prompt_id`` and the prompt fields) are
    never replaced; fields added earlier by this function are replaced only with
    ``replace=True`` (so re-labelling a store is explicit).

    Returns the names written. Raises InputError for a wrong length, a non-string value,
    or a field that exists and may not be replaced.
    """
    path = Path(path)
    lock = StoreLock(path)
    try:
        with schema.open_h5(path, "a") as f:
            schema.check_is_store(f, path)
            n = int(f.attrs["n_committed"])
            extracted = set(_extracted_fields(f))
            for name, values in columns.items():
                if not name or "/" in name:
                    raise InputError(f"{path}: bad metadata field name {name!r}")
                values = list(values)
                if len(values) != n:
                    raise InputError(f"{path}: metadata field {name!r} has {len(values)} values for {n} sequences")
                bad = next((v for v in values if not isinstance(v, str)), None)
                if bad is not None:
                    raise InputError(f"{path}: metadata field {name!r} must hold strings, got {type(bad).__name__}")
                key = f"meta/{name}"
                if key in f:
                    if name in extracted or not replace:
                        why = "written by the extraction" if name in extracted else "exists (pass replace=True)"
                        raise InputError(f"{path}: metadata field {name!r} {why}")
                    del f[key]
                f.create_dataset(key, data=np.array(values, dtype=object), dtype=schema.STR_DTYPE,
                                 chunks=(max(min(n, 1024), 1),), maxshape=(None,))
                added = _added_fields(f)
                if name not in added:
                    f["meta"].attrs["meta_added"] = ",".join(added + [name])
            f.flush()
    finally:
        lock.close()
    return list(columns)


def _extracted_fields(f) -> list[str]:
    """``/meta`` fields the extraction wrote: prompt_id, finish_reason and the prompt fields.

    The config does not list them, so they are the fields that existed before any
    :func:`add_meta` call, recorded in the ``meta_added`` attribute of ``/meta``.
    """
    added = set(_added_fields(f))
    return [k for k in (f["meta"].keys() if "meta" in f else []) if k not in added]


def _added_fields(f) -> list[str]:
    raw = schema.attr_str(f["meta"].attrs.get("meta_added", "")) if "meta" in f else ""
    return [x for x in raw.split(",") if x]
