"""The HDF5 trajectory-store contract (docs/architecture.md §2), shared by writer, reader and merge.

Layout (token-major, flat, append-only)::

    /tokens           int32 (N,)      token ids of all sequences, concatenated
    /offsets          int64 (S+1,)    sequence s is rows offsets[s]:offsets[s+1]
    /generated        bool  (N,)      True where the model generated the token
    /hidden/<layer>   float16 (N, D)  residual stream after decoder block <layer>;
                                      "embed" = embedding output
    /meta/<field>     str (S,)        per-sequence metadata; prompt_id always
    /tokenizer        uint8 (B,)      optional: the fast tokenizer's JSON, for decoding

Datasets may be longer than the committed data while a file is written
(geometric growth); only ``offsets[:n_committed + 1]`` and the token rows
below ``offsets[n_committed]`` are valid. Closed files are trimmed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from activation_cache.errors import InputError

FORMAT = "ret-trajectories"
FORMAT_VERSION = 1
EMBED = "embed"
STR_DTYPE = h5py.string_dtype("utf-8")
HIDDEN_DTYPES = {"float16": np.float16, "float32": np.float32}
COMPRESSIONS = (None, "lzf", "gzip")

#: Target bytes per chunk along the token axis (docs/architecture.md §2: about 0.5-1 MiB).
CHUNK_BYTES = 1 << 20

REQUIRED_ATTRS = (
    "format", "format_version", "model", "model_revision", "d_model", "n_model_layers",
    "layers", "dtype", "toolkit_version", "nnsight_version", "transformers_version",
    "config_json", "n_committed", "created",
)


def layer_name(layer: int | str) -> str:
    """Canonical dataset name of a layer: ``"embed"`` or a 0-based decimal string."""
    if isinstance(layer, str) and layer == EMBED:
        return EMBED
    return str(int(layer))


def chunk_rows(row_bytes: int, target: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk is about ``target`` bytes (power of two, >= 64)."""
    rows = max(64, target // max(row_bytes, 1))
    return 1 << (rows.bit_length() - 1)


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def superblock_info(path: str | Path) -> tuple[int, int] | None:
    """``(stored end-of-file address, status flags)`` of a v2/v3 superblock at offset 0, else None.

    A cleanly closed file is exactly ``end-of-file`` bytes long; a shorter one
    lost its tail (cut by a copy, or a write failed). The status flags are
    non-zero while a writer has the file open (or crashed with it open).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head.startswith(_SIGNATURE) or len(head) < 48 or head[8] not in (2, 3) or head[9] != 8:
        return None
    base, eof = int.from_bytes(head[12:20], "little"), int.from_bytes(head[28:36], "little")
    return base + eof, head[11]


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an HDF5 file, turning 'missing' and 'not HDF5 / truncated' into InputError."""
    path = Path(path)
    if mode == "r" and not path.exists():
        raise InputError(f"store not found: {path}")
    if path.is_dir():
        raise InputError(f"store path is a directory, expected an .h5 file: {path}")
    sb = superblock_info(path) if path.exists() else None
    if sb is not None and sb[1] == 0 and path.stat().st_size < sb[0]:
        # SWMR readers skip HDF5's own size check, so a cut file would open and fail later.
        raise InputError(f"{path}: truncated HDF5 file ({path.stat().st_size} of {sb[0]} bytes)")
    try:
        if mode == "r":
            # swmr=True also opens files whose writer is still running or crashed.
            return h5py.File(path, "r", libver="latest", swmr=True)
        return h5py.File(path, mode, libver="latest")
    except OSError as e:
        if isinstance(e, BlockingIOError) or "unable to lock file" in str(e):
            raise InputError(f"{path}: file is locked by another process (a running extraction or an "
                             "open reader); close it and retry") from None
        reason = str(e).split("(")[0].strip() or type(e).__name__
        raise InputError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {reason}") from None


def check_is_store(f: h5py.File, path: str | Path) -> None:
    """Raise InputError unless ``f`` is a ret-trajectories store this version can read."""
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        raise InputError(f"{path}: not a ret-trajectories store (format attribute is {fmt!r})")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise InputError(f"{path}: store format_version {version} is newer than this toolkit reads ({FORMAT_VERSION})")
    missing = [a for a in REQUIRED_ATTRS if a not in f.attrs]
    if missing:
        raise InputError(f"{path}: store lacks attributes {missing} (not written by ret-extract?)")
    for name in ("tokens", "offsets", "generated"):
        if name not in f:
            raise InputError(f"{path}: store lacks dataset /{name} (truncated?)")
    n = int(f.attrs["n_committed"])
    if f["offsets"].shape[0] < n + 1:
        raise InputError(f"{path}: n_committed={n} but /offsets has {f['offsets'].shape[0]} rows (truncated?)")


def read_config(f: h5py.File) -> dict[str, Any]:
    """The extraction config stored in the ``config_json`` root attribute."""
    return json.loads(f.attrs["config_json"])


def attr_str(value: Any) -> str:
    """h5py returns str or bytes for string attributes depending on how they were written."""
    return value.decode() if isinstance(value, bytes) else str(value)
