"""Helpers for "check, then write" tests: what a refused run must leave behind."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digests(root: str | Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (a directory, or one file), keyed by its path relative to ``root``.

    Two equal results mean that no file was added, removed or changed.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {(p.name if p == root else str(p.relative_to(root))): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def one_error_line(err: str, prog: str | None = None) -> str:
    """The single non-empty stderr line of a refused run (no traceback); returned for further checks."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    if prog is not None:
        assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]
