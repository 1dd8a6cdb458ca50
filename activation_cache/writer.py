"""Write batches of trajectories to an HDF5 store, crash-safely (docs/architecture.md §2).

Each :meth:`StoreWriter.append` writes one batch of whole sequences, flushes,
and only then advances the ``n_committed`` attribute and flushes again. The file
is in SWMR mode, so a crash at any point (even ``kill -9``) leaves a file whose
committed part is readable; reopening the same path with the same config
resumes after the last committed sequence and overwrites the half-written tail.

With ``overwrite`` the new store is written beside the old one, under
:func:`staging_path`, and renamed over it only when the run completes: until
then a failure or a kill leaves the old store byte-identical, and a rerun with
``overwrite`` resumes the staged file.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from activation_cache import schema
from activation_cache._version import __version__
from activation_cache.errors import InputError, option
from activation_cache.h5clear import clear_status_flags
from activation_cache.lock import StoreLock
from activation_cache.outputs import differing_keys
from activation_cache.running_stats import RowStats, committed_slot, create_slots, read_slot, row_norms, write_slot
from activation_cache.store_spec import Batch, StoreSpec


class StoreWriteError(InputError):
    """A write to the store failed (disk full, file-size limit, I/O error).

    The committed sequences stay readable and a rerun resumes. The HDF5 library
    cannot close a file whose buffered writes failed: closing retries the
    writes, and a file left open makes the library crash (SIGSEGV) when the
    interpreter exits. The writer therefore keeps the file open and CLIs end
    the process with ``os._exit`` right after reporting this error
    (:attr:`hard_exit`).
    """

    hard_exit = True


#: Files of writers whose writes failed, kept referenced so they are never
#: closed (see :class:`StoreWriteError`).
_FAILED_FILES: list[Any] = []


def _write_reason(e: BaseException) -> str:
    """One line from an h5py write error, e.g. "Unable to ... flush file: File too large (errno 27)"."""
    text = " ".join(str(e).split()) or type(e).__name__
    m = re.search(r"errno = (\d+), error message = '([^']*)'", text)
    return f"{text.split(' (')[0]}: {m[2]} (errno {m[1]})" if m else text


def _rebuild_string_columns(f: h5py.File) -> None:
    """Rewrite each ``/meta`` column as a new dataset holding only its committed strings.

    The uncommitted tail of a variable-length string dataset points into heap
    objects that a killed writer may have left half-written; overwriting such an
    element makes HDF5 free the old object first and fail ("bad heap index").
    A new dataset never reads the old heap (its space is lost, a few bytes per
    sequence).
    """
    n = int(f.attrs["n_committed"])
    for name in list(f["meta"]) if "meta" in f else []:
        values = f[f"meta/{name}"][:n]
        del f[f"meta/{name}"]
        ds = _string_column(f, name, n)
        if n:
            ds[:] = values


def _string_column(f: h5py.File, name: str, n: int = 0) -> h5py.Dataset:
    """``/meta/<name>``: one variable-length UTF-8 string per sequence, growable."""
    return f.create_dataset(f"meta/{name}", (n,), maxshape=(None,), dtype=schema.STR_DTYPE, chunks=(1024,))


def staging_path(path: str | Path) -> Path:
    """Where ``overwrite`` builds the store that replaces ``path``: a hidden file beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.new")


class StoreWriter:
    """Create, resume and append to a trajectory store.

    Use as a context manager; on a clean exit the datasets are trimmed to their
    committed size. On an exception the file is closed without trimming: the
    committed part stays readable and a rerun resumes. A store this writer
    created and that holds nothing committed is removed on an exception, so a
    corrected rerun (other settings) is not refused by the failed run's empty file.

    With ``overwrite`` the store is built at :func:`staging_path` (resumed
    there if a killed run of the same config left it) and renamed over
    ``path`` on a clean exit only; :attr:`path` is the file being written,
    :attr:`target` the one the caller named.
    """

    def __init__(self, path: str | Path, spec: StoreSpec, *, overwrite: bool = False):
        self.target = Path(path)
        self.path = staging_path(self.target) if overwrite else self.target
        self.spec = spec
        parent = self.target.resolve().parent
        if not parent.is_dir():
            raise InputError(f"output directory does not exist: {parent}")
        if self.target.is_dir():
            raise InputError(f"{option('out')} is a directory, expected a file path: {self.target}")
        self.resumed = False
        self._created = False
        self._lock = StoreLock(self.target)
        try:
            if overwrite and self.path.exists() and not self._resumable():
                self.path.unlink()  # a staged store of other settings: start this one afresh
            if self.path.exists():
                self._f = self._open_existing()
                self.resumed = True
            else:
                self._f = self._create()
                self._created = True
            self._stats, self._slot = _committed_stats(self._f, spec)  # before SWMR: may add datasets
            self._start_swmr()
        except BaseException:
            if getattr(self, "_f", None) is not None:
                self._f.close()
            self._lock.close()
            raise
        # One open handle per dataset for the writer's lifetime: its chunk cache
        # lives as long as the handle, and f.flush() writes it out at each commit.
        self._ds: dict[str, h5py.Dataset] = {}
        self._f.visititems(lambda name, obj: self._ds.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
        self._failed = False
        self._n_seq = int(self._f.attrs["n_committed"])
        self._n_tok = int(self._ds["offsets"][self._n_seq])

    # ------------------------------------------------------------------ open
    def _start_swmr(self, wait_s: float = 10.0) -> None:
        """Switch to SWMR writing; a reader that opened the file in the instant after its creation
        holds HDF5's file lock for a moment, so wait for it rather than fail."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._f.swmr_mode = True
                return
            except RuntimeError as e:
                if "lock" not in str(e) or time.monotonic() > deadline:
                    raise InputError(f"{self.path}: cannot start writing: another process holds the file open "
                                     f"without SWMR ({' '.join(str(e).split())})") from None
                time.sleep(0.05)

    def _create(self) -> h5py.File:
        spec = self.spec
        try:
            f = h5py.File(self.path, "w", libver="latest")
        except OSError as e:
            raise InputError(f"cannot create store {self.path}: {e}") from None
        itemsize = np.dtype(schema.HIDDEN_DTYPES[spec.dtype]).itemsize
        comp = {"compression": spec.compression} if spec.compression else {}
        tok_chunk = schema.chunk_rows(4)
        f.create_dataset("tokens", (0,), maxshape=(None,), dtype=np.int32, chunks=(tok_chunk,), **comp)
        f.create_dataset("generated", (0,), maxshape=(None,), dtype=bool, chunks=(tok_chunk,), **comp)
        f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(4096,))
        rows = schema.chunk_rows(spec.d_model * itemsize)
        for name in spec.layers:
            ds = f.create_dataset(
                f"hidden/{name}", (0, spec.d_model), maxshape=(None, spec.d_model),
                dtype=schema.HIDDEN_DTYPES[spec.dtype], chunks=(rows, spec.d_model), **comp,
            )
            ds.attrs["dtype"] = spec.dtype  # says what the uint16 of a bfloat16 store are
        for name in spec.meta_fields:
            _string_column(f, name)
        _create_stats(f, spec.layers, spec.d_model, comp)
        if spec.tokenizer_json:
            f.create_dataset("tokenizer", data=np.frombuffer(spec.tokenizer_json.encode(), np.uint8))
        import nnsight
        import transformers

        attrs = {
            "format": schema.FORMAT,
            "format_version": schema.FORMAT_VERSION,
            "model": spec.model,
            "model_revision": spec.model_revision,
            "d_model": spec.d_model,
            "n_model_layers": spec.n_model_layers,
            "layers": json.dumps(spec.layers),
            "dtype": spec.dtype,
            "toolkit_version": __version__,
            "nnsight_version": nnsight.__version__,
            "transformers_version": transformers.__version__,
            "config_json": spec.config_json,
            "n_committed": np.int64(0),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        attrs.update({k: v for k, v in (("model_dtype", spec.model_dtype), ("device", spec.device),
                                        ("dtype_choice", spec.dtype_choice)) if v})
        for k, v in attrs.items():
            f.attrs[k] = v
        f.flush()
        return f

    def _resumable(self) -> bool:
        """Whether the file at :attr:`path` is a store of this config (read only; False if unreadable)."""
        try:
            with schema.open_h5(self.path, "r") as f:
                schema.check_is_store(f, self.path)
                return json.loads(f.attrs["config_json"]) == self.spec.config
        except (InputError, OSError, KeyError, ValueError):
            return False

    def _check_existing(self) -> None:
        """Refuse a store with another config by reading it only, so a refusal changes no byte."""
        with schema.open_h5(self.path, "r") as f:
            self._check_config(f)

    def _check_config(self, f: h5py.File) -> None:
        schema.check_is_store(f, self.path)
        stored = json.loads(f.attrs["config_json"])
        if stored != self.spec.config:
            keys = differing_keys(stored, self.spec.config)
            raise InputError(
                f"{self.path} exists with a different extraction config (differs in {', '.join(keys)}); "
                f"pass {option('overwrite', True)} to replace it or write to another path"
            )

    def _open_existing(self) -> h5py.File:
        sb = schema.superblock_info(self.path)
        if sb is None or sb[1] == 0:  # closed cleanly: compare configs without opening for writing
            self._check_existing()
        crashed = clear_status_flags(self.path)  # a crashed writer leaves them set
        if crashed:
            # ...and may have died before the file reached the size its
            # superblock records (a failed write at the end, disk full). Those
            # bytes belonged to the uncommitted tail: pad them with zeros so
            # HDF5 opens the file; the tail is overwritten on resume.
            sb = schema.superblock_info(self.path)
            if sb is not None and os.path.getsize(self.path) < sb[0]:
                os.truncate(self.path, sb[0])
        f = schema.open_h5(self.path, "a")
        try:
            self._check_config(f)
            if crashed:
                _rebuild_string_columns(f)
        except BaseException:
            f.close()
            raise
        return f

    # ---------------------------------------------------------------- append
    @property
    def n_committed(self) -> int:
        """Sequences fully written and flushed."""
        return self._n_seq

    @property
    def n_tokens(self) -> int:
        """Token rows of the committed sequences."""
        return self._n_tok

    def _reserve(self, name: str, needed: int) -> h5py.Dataset:
        ds = self._ds[name]
        if ds.shape[0] < needed:
            ds.resize(max(needed, 2 * ds.shape[0]), axis=0)  # geometric growth, trimmed at close
        return ds

    def append(self, batch: Batch) -> None:
        """Write one batch of sequences and commit it (flush, then bump ``n_committed``).

        Raises :class:`StoreWriteError` if the file cannot be written; the
        writer is unusable afterwards.
        """
        if self._failed:
            raise StoreWriteError(f"{self.path}: an earlier write failed; rerun to resume")
        try:
            self._append(batch)
        except (OSError, RuntimeError) as e:
            self._failed = True
            _FAILED_FILES.append((self._f, self._ds))
            raise StoreWriteError(
                f"write error on {self.path} after {self._n_seq} committed sequences "
                f"(they stay readable; rerun the same command to resume): {_write_reason(e)}"
            ) from None

    def _append(self, batch: Batch) -> None:
        lengths = np.array([len(t) for t in batch.tokens], np.int64)
        n0, s0 = self._n_tok, self._n_seq
        n1, s1 = n0 + int(lengths.sum()), s0 + len(lengths)
        tokens = np.concatenate(batch.tokens).astype(np.int32, copy=False) if len(lengths) else np.zeros(0, np.int32)
        generated = np.concatenate(batch.generated).astype(bool, copy=False) if len(lengths) else np.zeros(0, bool)
        self._reserve("tokens", n1)[n0:n1] = tokens
        self._reserve("generated", n1)[n0:n1] = generated
        totals = {}
        for name in self.spec.layers:
            rows = self._stored(batch.hidden[name])
            self._reserve(f"hidden/{name}", n1)[n0:n1] = rows
            part, norms = self._stats_of(batch, name, rows)
            self._reserve(f"norms/{name}", n1)[n0:n1] = norms
            totals[name] = self._stats[name] + part
        self._reserve("offsets", s1 + 1)[s0 + 1 : s1 + 1] = n0 + np.cumsum(lengths)
        for name in self.spec.meta_fields:
            self._reserve(f"meta/{name}", s1)[s0:s1] = [m.get(name, "") for m in batch.meta]
        # the new totals go to the slot the committed state does not use (running_stats)
        slot = 1 - self._slot
        write_slot(self._ds, slot, totals, s1)
        self._f.flush()
        # Only now is the batch durable: advance the commit mark.
        self._f.attrs["n_committed"] = np.int64(s1)
        self._f.flush()
        self._n_tok, self._n_seq = n1, s1
        self._stats, self._slot = totals, slot

    def _stats_of(self, batch: Batch, name: str, rows: np.ndarray) -> tuple[RowStats, np.ndarray]:
        """The batch's statistics of layer ``name`` and its row norms: as given, else computed from ``rows``."""
        if batch.stats is not None and batch.norms is not None and name in batch.stats:
            return batch.stats[name], np.asarray(batch.norms[name], np.float32)
        values = schema.decode_hidden(rows, self.spec.dtype)
        return RowStats.of(values), row_norms(values).numpy()

    def _stored(self, x) -> np.ndarray:
        """Rows as the bytes this store holds (bf16 stores: float rows are encoded, uint16 taken as bits)."""
        dtype = self.spec.dtype
        if dtype == "bfloat16" and getattr(x, "dtype", None) == np.uint16:
            return x
        if dtype == "bfloat16":
            return schema.encode_hidden(np.asarray(x, np.float32), dtype)
        return np.asarray(x, dtype=schema.HIDDEN_DTYPES[dtype])

    # ----------------------------------------------------------------- close
    def close(self, trim: bool = True, discard: bool = False) -> None:
        """Close the file; with ``trim`` shrink every dataset to the committed size (and move a
        staged store over :attr:`target`); with ``discard`` remove it. Both under the lock, so no
        other writer can open the file in between."""
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            if discard:
                if not self._failed:  # closing a failed file would retry its writes (see StoreWriteError)
                    f.close()
                self.path.unlink(missing_ok=True)
                return
            if self._failed:
                return  # closing would retry the failed writes (see StoreWriteError)
            self._ds.clear()
            trimmed = not trim
            try:
                if trim:
                    # Trim through the open SWMR handle: reopening the file would fail
                    # while a SWMR reader still has it open (it holds a file lock).
                    _trim(f, self._n_seq, self._n_tok)
                    trimmed = True
            except (OSError, RuntimeError, ValueError):
                pass  # HDF5 builds that refuse to shrink in SWMR mode: reopen below
            finally:
                f.close()
            if not trimmed:
                with schema.open_h5(self.path, "a") as g:
                    _trim(g, self._n_seq, self._n_tok)
            if trim and self.path != self.target:
                os.replace(self.path, self.target)  # complete: the old store goes only now
        finally:
            self._lock.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close(trim=exc_type is None, discard=exc_type is not None and self._created and self._n_seq == 0)
        except Exception:
            if exc_type is None:
                raise


def _create_stats(f: h5py.File, layers: list[str], d_model: int, comp: dict) -> None:
    """The running statistics of an empty store (activation_cache.running_stats) and its row norms."""
    create_slots(f, layers, d_model)
    for name in layers:
        f.create_dataset(f"norms/{name}", (0,), maxshape=(None,), dtype=np.float32,
                         chunks=(schema.chunk_rows(4),), **comp)


def _committed_stats(f: h5py.File, spec: StoreSpec) -> tuple[dict[str, RowStats], int]:
    """The running statistics of the committed rows and their slot; a store without them (written
    before they existed) gets them here, from one pass over its committed rows."""
    n_seq = int(f.attrs["n_committed"])
    have = "stats" in f and all(f"stats/{n}/mean" in f and f"norms/{n}" in f for n in spec.layers)
    slot = committed_slot(f, n_seq) if have else None
    if slot is not None:
        return read_slot(f, spec.layers, slot), slot
    for group in ("stats", "norms"):
        if group in f:
            del f[group]
    _create_stats(f, spec.layers, spec.d_model, {"compression": spec.compression} if spec.compression else {})
    n_tok = int(f["offsets"][n_seq])
    totals = {}
    for name in spec.layers:
        ds, norms, total = f[f"hidden/{name}"], f[f"norms/{name}"], RowStats.empty(spec.d_model)
        norms.resize(n_tok, axis=0)
        step = ds.chunks[0] * 8 if ds.chunks else 1 << 14
        for lo in range(0, n_tok, step):
            values = schema.decode_hidden(ds[lo : min(lo + step, n_tok)], spec.dtype)
            total = total + RowStats.of(values)
            norms[lo : lo + len(values)] = row_norms(values).numpy()
        totals[name] = total
    write_slot(f, 0, totals, n_seq)
    f.flush()
    return totals, 0


def _trim(f: h5py.File, n_seq: int, n_tok: int) -> None:
    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or name == "tokenizer" or name.startswith("stats/"):
            return
        size = n_seq + 1 if name == "offsets" else n_seq if name.startswith("meta/") else n_tok
        if obj.shape[0] != size:
            obj.resize(size, axis=0)

    f.visititems(visit)


__all__ = ["Batch", "StoreSpec", "StoreWriteError", "StoreWriter", "staging_path"]
