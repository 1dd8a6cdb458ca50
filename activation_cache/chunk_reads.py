"""Rows of an uncompressed store dataset read straight from the file's bytes.

An uncompressed chunk of ``/hidden/<layer>`` (the writer's chunks span whole rows) is
``rows x D`` values stored contiguously at one file offset, which HDF5's chunk index
gives (``H5Dget_chunk_info``). :class:`DirectRows` looks each chunk's offset up once and
reads a run of rows with one ``os.preadv`` per chunk it touches, into the caller's
buffer: one copy from the page cache, none of the HDF5 call's own overhead. Datasets it
cannot read this way (compressed, virtual, external, other chunk shapes, or without
``os.preadv``) are read by h5py, as before.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

__all__ = ["DirectRows"]


class DirectRows:
    """Reads rows of one uncompressed, row-chunked dataset from the file descriptor ``fd``."""

    def __init__(self, ds: h5py.Dataset, fd: int):
        self.ds, self.fd = ds, fd
        self.chunk = int(ds.chunks[0])
        self.row_bytes = int(ds.shape[1]) * ds.dtype.itemsize
        self._offsets: dict[int, int] = {}

    @staticmethod
    def usable(ds: h5py.Dataset) -> bool:
        """Whether ``ds``'s rows lie in the file as plain bytes, chunk by chunk."""
        return (hasattr(os, "preadv") and ds.ndim == 2 and ds.chunks is not None and ds.chunks[1] == ds.shape[1]
                and ds.compression is None and not ds.is_virtual and not ds.external and not ds.scaleoffset
                and not ds.shuffle and not ds.fletcher32 and ds.dtype.isnative)

    def _offset(self, c: int) -> int | None:
        if c not in self._offsets:
            if hasattr(self.ds.id, "chunk_iter"):  # every chunk in one walk of the index: ~1 us a chunk, not ~13
                self.ds.id.chunk_iter(lambda info: self._offsets.__setitem__(info.chunk_offset[0] // self.chunk,
                                                                             int(info.byte_offset)))
            if c not in self._offsets:
                info = self.ds.id.get_chunk_info_by_coord((c * self.chunk, 0))
                if info.byte_offset is None:
                    return None  # not written yet: let HDF5 answer
                self._offsets[c] = int(info.byte_offset)
        return self._offsets[c]

    def read(self, lo: int, hi: int, out: np.ndarray) -> bool:
        """Rows ``[lo, hi)`` into ``out`` (C-contiguous, (hi - lo, D), the dataset's dtype); False if it could
        not (a chunk not allocated, a short read): the caller reads them another way."""
        buf = memoryview(out).cast("B")
        pos = 0
        for c in range(lo // self.chunk, (hi - 1) // self.chunk + 1):
            a, b = max(lo, c * self.chunk), min(hi, (c + 1) * self.chunk)
            offset = self._offset(c)
            n = (b - a) * self.row_bytes
            if offset is None or os.preadv(self.fd, [buf[pos : pos + n]], offset + (a - c * self.chunk) * self.row_bytes) != n:
                return False
            pos += n
        return True
