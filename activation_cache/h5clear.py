"""Clear the "open for write" flags a crashed SWMR writer leaves in an HDF5 file.

A writer in SWMR mode marks the superblock (file consistency flags) while it
has the file open. If it is killed, the marks stay and HDF5 refuses to open the
file for writing again ("may use h5clear"). The data itself is consistent up to
the last flush -- that is what SWMR guarantees its readers -- so resuming only
needs the flags cleared, which is what the ``h5clear -s`` tool does. h5py does
not expose it, so we rewrite the 1-byte flag field and the superblock checksum.
"""

from __future__ import annotations

import struct
from pathlib import Path

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: HDF5's metadata checksum."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    i = 0
    while length > 12:
        a = (a + struct.unpack_from("<I", data, i)[0]) & _MASK
        b = (b + struct.unpack_from("<I", data, i + 4)[0]) & _MASK
        c = (c + struct.unpack_from("<I", data, i + 8)[0]) & _MASK
        a = (a - c) & _MASK; a ^= _rot(c, 4); c = (c + b) & _MASK  # noqa: E702
        b = (b - a) & _MASK; b ^= _rot(a, 6); a = (a + c) & _MASK  # noqa: E702
        c = (c - b) & _MASK; c ^= _rot(b, 8); b = (b + a) & _MASK  # noqa: E702
        a = (a - c) & _MASK; a ^= _rot(c, 16); c = (c + b) & _MASK  # noqa: E702
        b = (b - a) & _MASK; b ^= _rot(a, 19); a = (a + c) & _MASK  # noqa: E702
        c = (c - b) & _MASK; c ^= _rot(b, 4); b = (b + a) & _MASK  # noqa: E702
        length -= 12
        i += 12
    if length == 0:
        return c
    tail = data[i:] + bytes(12 - length)
    a = (a + struct.unpack_from("<I", tail, 0)[0]) & _MASK
    b = (b + struct.unpack_from("<I", tail, 4)[0]) & _MASK
    c = (c + struct.unpack_from("<I", tail, 8)[0]) & _MASK
    c ^= b; c = (c - _rot(b, 14)) & _MASK  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & _MASK  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _MASK  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _MASK  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _MASK  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _MASK  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _MASK  # noqa: E702
    return c


def clear_status_flags(path: str | Path) -> bool:
    """Reset the superblock consistency flags of ``path`` (superblock v2/v3).

    Returns True if flags were set and have been cleared, False if there was
    nothing to do (flags already clear, or an older superblock version that
    SWMR files never use).
    """
    with open(path, "r+b") as f:
        head = f.read(64)
        if not head.startswith(_SIGNATURE) or head[8] not in (2, 3):
            return False
        offset_size = head[9]
        n = 12 + 4 * offset_size  # fixed fields + base/ext/eof/root addresses
        if head[11] == 0:
            return False
        if struct.unpack_from("<I", head, n)[0] != lookup3(head[:n]):
            return False  # not a superblock we understand; leave it alone
        new = bytearray(head[:n])
        new[11] = 0
        f.seek(0)
        f.write(bytes(new) + struct.pack("<I", lookup3(bytes(new))))
        f.flush()
    return True
