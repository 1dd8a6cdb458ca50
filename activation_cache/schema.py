"""The HDF5 trajectory-store contract (docs/architecture.md §2), shared by writer, reader and merge.

Layout (token-major, flat, append-only)::

    /tokens           int32 (N,)      token ids of all sequences, concatenated
    /offsets          int64 (S+1,)    sequence s is rows offsets[s]:offsets[s+1]
    /generated        bool  (N,)      True where the model generated the token
    /hidden/<layer>   float16 (N, D)  residual stream after decoder block <layer>;
                                      "embed" = embedding output. float32, or
                                      bfloat16 stored as its raw bits (uint16)
    /meta/<field>     str (S,)        per-sequence metadata; prompt_id always
    /tokenizer        uint8 (B,)      optional: the fast tokenizer's JSON, for decoding

Datasets may be longer than the committed data while a file is written
(geometric growth); only ``offsets[:n_committed + 1]`` and the token rows
below ``offsets[n_committed]`` are valid. Closed files are trimmed.

HDF5 has no bfloat16 type, so a ``dtype="bfloat16"`` store keeps each value's
two bytes as ``uint16`` (the upper half of its float32 pattern, as other
tools store bf16) and says so in the root ``dtype`` attribute and in each
hidden dataset's ``dtype`` attribute. :func:`hidden_dataset` reads any store's
hidden states as floating-point numbers (bf16 values come back exactly, as
float32).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from activation_cache.errors import InputError

if TYPE_CHECKING:
    import torch

FORMAT = "ret-trajectories"
#: 2 added bfloat16 storage and the model_dtype / device attributes; 1 is still read.
FORMAT_VERSION = 2
EMBED = "embed"
STR_DTYPE = h5py.string_dtype("utf-8")
#: Storage dtypes by name -> the numpy dtype of the bytes on disk.
HIDDEN_DTYPES = {"float16": np.float16, "float32": np.float32, "bfloat16": np.uint16}
#: The numpy dtype hidden states are read back as.
READ_DTYPES = {"float16": np.float16, "float32": np.float32, "bfloat16": np.float32}
COMPRESSIONS = (None, "lzf", "gzip")

#: Target bytes per chunk along the token axis (docs/architecture.md §2: about 0.5-1 MiB).
CHUNK_BYTES = 1 << 20

REQUIRED_ATTRS = (
    "format", "format_version", "model", "model_revision", "d_model", "n_model_layers",
    "layers", "dtype", "toolkit_version", "nnsight_version", "transformers_version",
    "config_json", "n_committed", "created",
)


def encode_hidden(x: torch.Tensor | np.ndarray, dtype: str) -> np.ndarray:
    """Hidden states (any float dtype, any device) as the bytes a ``dtype`` store holds, on the CPU.

    bfloat16 is rounded to nearest-even by torch (exact for a bf16 model's
    own activations) and returned as its uint16 bit pattern.
    """
    import torch

    t = torch.as_tensor(x).to(torch_dtype(dtype))
    if dtype == "bfloat16":
        return t.view(torch.int16).cpu().numpy().view(np.uint16)
    return t.cpu().numpy()


def stored_tensor(stored: np.ndarray, dtype: str) -> "torch.Tensor":
    """Rows as a ``dtype`` store holds them -> a tensor of their values without copying: float16, float32,
    or a bfloat16 store's bit patterns viewed as bfloat16 (exact)."""
    import torch

    if dtype == "bfloat16":
        return torch.from_numpy(stored.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(stored)


def torch_dtype(dtype: str) -> "torch.dtype":
    """The torch dtype of a store's values (``"float16"``, ``"bfloat16"``, ``"float32"``)."""
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


def decode_hidden(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored hidden-state bytes -> float array (bf16 bit patterns become exact float32)."""
    if dtype != "bfloat16":
        return raw
    return (np.asarray(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


def all_finite(stored: np.ndarray, dtype: str) -> bool:
    """True when no stored value is inf or NaN (bf16: the exponent bits are not all ones)."""
    if dtype == "bfloat16":
        return not bool(((np.asarray(stored, np.uint16) & 0x7F80) == 0x7F80).any())
    return bool(np.isfinite(stored).all())


class HiddenDataset:
    """A ``/hidden/<layer>`` dataset of a bfloat16 store that reads as float32.

    Slicing returns decoded arrays; ``shape``, ``chunks`` and ``name`` are the
    dataset's; ``dtype`` is the dtype read back.
    """

    def __init__(self, ds: h5py.Dataset, dtype: str):
        self.ds, self.stored_dtype = ds, dtype
        self.shape, self.chunks, self.name = ds.shape, ds.chunks, ds.name
        self.dtype = np.dtype(READ_DTYPES[dtype])

    def __getitem__(self, key) -> np.ndarray:
        return decode_hidden(self.ds[key], self.stored_dtype)

    def __len__(self) -> int:
        return self.shape[0]


class ProcessFile:
    """An HDF5 file opened read-only on first use in each process.

    A handle must not cross a fork (DataLoader workers) or a pickle (spawn):
    :meth:`get` reopens the file in a process that did not open it, and the
    handle is dropped when pickled.
    """

    def __init__(self, path: str | Path, chunk_cache: bool = True):
        self.path = Path(path)
        self.chunk_cache = chunk_cache
        self._f: h5py.File | None = None
        self._pid = -1
        self._fd: tuple[int, int] | None = None  # (descriptor, the process that opened it)

    def get(self) -> h5py.File:
        if self._f is None or self._pid != os.getpid():
            self._f, self._pid = open_h5(self.path, "r", self.chunk_cache), os.getpid()
            self._datasets: dict = {}
        return self._f

    def dataset(self, name: str) -> h5py.Dataset:
        """The dataset ``name`` of :meth:`get`'s file, looked up once per process (a lookup costs ~0.1 ms)."""
        f = self.get()
        if name not in self._datasets:
            self._datasets[name] = f[name]
        return self._datasets[name]

    def space(self, name: str) -> tuple[h5py.h5d.DatasetID, h5py.h5s.SpaceID]:
        """The low-level id of dataset ``name`` and a dataspace of it to select in (one per process)."""
        self.get()
        key = (name, "space")
        if key not in self._datasets:
            dsid = self.dataset(name).id
            self._datasets[key] = (dsid, dsid.get_space())
        return self._datasets[key]

    def direct(self, name: str):
        """A :class:`~activation_cache.chunk_reads.DirectRows` for dataset ``name`` (one per process), or None
        when its rows are not plain bytes in the file (compressed, virtual...): read it through h5py."""
        from activation_cache.chunk_reads import DirectRows

        self.get()
        key = (name, "direct")
        if key not in self._datasets:
            ds = self.dataset(name)
            if DirectRows.usable(ds):
                if self._fd is None or self._fd[1] != self._pid:
                    self._fd = (os.open(self.path, os.O_RDONLY), self._pid)
                self._datasets[key] = DirectRows(ds, self._fd[0])
            else:
                self._datasets[key] = None
        return self._datasets[key]

    def read_rows(self, names: list[str], lo: int, hi: int, out: np.ndarray, at: int) -> None:
        """Rows ``[lo, hi)`` of the datasets ``names`` (one per layer), as stored, into ``out[at : at + hi - lo, j]``
        (``out``: C-contiguous (R, len(names), D) of the stored dtype); no cache, no intermediate copy.

        One dataset of plain bytes is read straight from the file (:meth:`direct`), others with
        h5py's low-level read (its ``Dataset.read_direct`` costs ~2x the read itself in selection set-up).
        """
        if len(names) == 1:
            direct = self.direct(names[0])
            if direct is not None and direct.read(lo, hi, out[at : at + hi - lo, 0]):
                return
        memory = h5py.h5s.create_simple(out.shape)
        for j, name in enumerate(names):
            dsid, space = self.space(name)
            space.select_hyperslab((lo, 0), (hi - lo, out.shape[2]))
            memory.select_hyperslab((at, j, 0), (hi - lo, 1, out.shape[2]))
            dsid.read(memory, space, out)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and fd[1] == os.getpid():
            os.close(fd[0])

    def __getstate__(self) -> dict:
        return {"path": self.path, "chunk_cache": self.chunk_cache, "_f": None, "_pid": -1, "_fd": None}


def hidden_dataset(f: h5py.File, layer: int | str) -> "h5py.Dataset | HiddenDataset":
    """``/hidden/<layer>`` of an open store, readable as floating-point numbers whatever its storage dtype."""
    ds = f[f"hidden/{layer_name(layer)}"]
    dtype = attr_str(f.attrs.get("dtype", "float16"))
    return HiddenDataset(ds, dtype) if dtype == "bfloat16" else ds


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


def open_h5(path: str | Path, mode: str = "r", chunk_cache: bool = True) -> h5py.File:
    """Open an HDF5 file, turning 'missing' and 'not HDF5 / truncated' into InputError.

    ``chunk_cache=False`` opens it without HDF5's chunk cache: a read of part of an
    uncompressed chunk then reads only those bytes, not the whole chunk through the cache.
    """
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
            cache = {} if chunk_cache else {"rdcc_nbytes": 0}
            return h5py.File(path, "r", libver="latest", swmr=True, **cache)
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


def check_offsets(offsets: np.ndarray, f: h5py.File, path: str | Path) -> None:
    """InputError unless the committed ``offsets`` (S+1,) start at 0, never decrease and stay
    within ``/tokens``, ``/generated`` and every ``/hidden/<layer>``."""
    if len(offsets) == 0 or offsets[0] != 0:
        raise InputError(f"{path}: corrupt store: /offsets does not start at 0")
    steps = np.diff(offsets)
    if (steps < 0).any():
        s = int(np.argmax(steps < 0))
        raise InputError(f"{path}: corrupt store: /offsets decrease at sequence {s} "
                         f"({int(offsets[s])} -> {int(offsets[s + 1])})")
    names = ["tokens", "generated"] + [f"hidden/{n}" for n in (f["hidden"] if "hidden" in f else ())]
    for name in names:
        if f[name].shape[0] < offsets[-1]:
            raise InputError(f"{path}: corrupt store: the committed sequences need {int(offsets[-1])} rows "
                             f"but /{name} has {f[name].shape[0]} (truncated?)")


def shard_record(f: h5py.File) -> dict[str, Any]:
    """What identifies one committed store: sequences, tokens, creation time and a hash of its config.

    A merged store records this for each shard and opens only if every shard still matches.
    """
    import hashlib

    n = int(f.attrs["n_committed"])
    return {"n_sequences": n, "n_tokens": int(f["offsets"][n]), "created": attr_str(f.attrs["created"]),
            "config_sha256": hashlib.sha256(attr_str(f.attrs["config_json"]).encode()).hexdigest()}


def read_config(f: h5py.File) -> dict[str, Any]:
    """The extraction config stored in the ``config_json`` root attribute."""
    return json.loads(f.attrs["config_json"])


def attr_str(value: Any) -> str:
    """h5py returns str or bytes for string attributes depending on how they were written."""
    return value.decode() if isinstance(value, bytes) else str(value)
