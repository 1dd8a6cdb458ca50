"""Results that are their JSON record: read like a mapping, saved with ``to_json()``, shown with ``table()`` / ``figure()``.

The analyses write a JSON record (``planning.json``, ``forecast.json``) whose
keys are documented by the function that makes it. :class:`RecordResult` keeps
that record as the single source of truth, so what a notebook reads, what the
file holds and what the command prints cannot drift apart; subclasses add
the presentation (a text table a console command prints as it is, a plotly
figure).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["RecordResult"]


class RecordResult(Mapping):
    """A read-only mapping over one result record (nested dicts, lists, numbers, strings)."""

    def __init__(self, record: Mapping[str, Any]):
        self._record = dict(record)

    def __getitem__(self, key: str) -> Any:
        return self._record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._record)

    def __len__(self) -> int:
        return len(self._record)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._record)})"

    def to_json(self) -> dict[str, Any]:
        """A deep copy of the record, as written to the result's JSON file."""
        return copy.deepcopy(self._record)

    @classmethod
    def load(cls, path: str | Path):
        """Read a result back from the JSON file a run wrote."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def table(self) -> str:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def figure(self):  # pragma: no cover - every subclass defines it
        raise NotImplementedError
