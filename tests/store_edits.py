"""Ways to break a copy of a store in place, shared by the store tests and the bad-input suite."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np


def edited(path: Path, edit: Callable[[h5py.File], None]) -> Path:
    """``path`` after ``edit`` was applied to it as an open HDF5 file."""
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def swap_offsets(f: h5py.File) -> None:
    """Offsets out of order: sequences 1 and 2 end in the wrong order (they decrease at sequence 2)."""
    o = f["offsets"][:]
    o[2], o[3] = o[3], o[2]
    f["offsets"][:] = o


def garbage_tokenizer(f: h5py.File) -> None:
    """A /tokenizer record that is not a tokenizer's JSON."""
    del f["tokenizer"]
    f.create_dataset("tokenizer", data=np.frombuffer(b"\x00\x01garbage", np.uint8))
