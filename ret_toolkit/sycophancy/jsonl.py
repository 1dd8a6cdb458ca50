"""Reading JSON Lines files with ``FILE:LINE`` errors.

Every problem raises :class:`~activation_cache.errors.InputError` with a one-line message
that names the file and, for a bad line, its 1-based line number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from activation_cache.errors import InputError
from activation_cache.prompts import text_lines

__all__ = ["iter_jsonl", "first_record"]


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield ``("FILE:LINE", record)`` for every non-blank line; each record is a JSON object.

    Raises:
        InputError: missing or unreadable file, a directory, invalid UTF-8, malformed JSON,
            or a line that is valid JSON but not an object.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a JSON Lines file")
    for lineno, line in text_lines(path, what="JSON Lines file"):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        yield where, rec


def first_record(path: str | os.PathLike) -> tuple[str, dict]:
    """``("FILE:LINE", record)`` of the first non-blank line; InputError if there is none."""
    for where, rec in iter_jsonl(path):
        return where, rec
    raise InputError(f"{path}: contains no records")
