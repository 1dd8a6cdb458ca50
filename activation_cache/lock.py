"""One writer per store: an exclusive advisory lock on ``<store>.lock``."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from activation_cache.errors import InputError

__all__ = ["StoreLock"]


class StoreLock:
    """Exclusive advisory lock on ``<path>.lock``: one writer per store.

    A SWMR writer holds no exclusive HDF5 lock, and resuming clears the flags a
    crashed writer left, so without this a second copy of the same command
    would append to a store that is still being written. The kernel releases
    the lock when the process dies, so a crash never leaves a stale lock (the
    empty file it leaves is harmless); a clean exit removes the file.
    """

    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")
        for _ in range(10):
            f = open(self.path, "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise InputError(f"{path} is being written by another process (lock {self.path.name} is held)") from None
            # Another writer may have removed the file between our open and flock: then
            # our lock is on an orphaned inode and a third process could lock a new one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._f = f
                return
            f.close()
        raise InputError(f"cannot take the lock {self.path} (it keeps being replaced)")

    def close(self) -> None:
        if self._f is None:
            return
        try:
            self.path.unlink()  # while still holding it, so no one locks the file we remove
        except FileNotFoundError:
            pass
        self._f.close()
        self._f = None
