"""One entry point for sycophancy data: the shipped bank or a JSON Lines file, told apart by its fields.

- ``"bank"`` (or ``"builtin:bank"``): :func:`~ret_toolkit.sycophancy.bank.load_bank` with the seed;
  two-turn :class:`~ret_toolkit.sycophancy.bank.SycItem` objects.
- a ``.jsonl`` file whose first record has ``question``, ``answer_matching_behavior`` and
  ``answer_not_matching_behavior``: the Anthropic format, one-turn
  :class:`~ret_toolkit.sycophancy.external.ChoiceItem` objects;
- a ``.jsonl`` file whose first record has ``question``, ``answer`` and ``wrong_answer``:
  a bank of the user's own (:func:`~ret_toolkit.sycophancy.bank.read_bank_jsonl`).

Items carry ``kind``: ``"fact"`` / ``"arithmetic"`` / ``"conversion"`` for two-turn items,
``"choice"`` for multiple-choice ones, so callers can pick the protocol per item
(:func:`is_two_turn`).
"""

from __future__ import annotations

import os
from pathlib import Path

from activation_cache.errors import InputError
from ret_toolkit.sycophancy.bank import load_bank, read_bank_jsonl
from ret_toolkit.sycophancy.external import (
    ANTHROPIC_FIELDS,
    is_anthropic_record,
    read_anthropic_jsonl,
)
from ret_toolkit.sycophancy.jsonl import first_record

__all__ = ["load_dataset", "is_two_turn", "BANK_NAMES"]

BANK_NAMES = ("bank", "builtin:bank")
_BANK_FIELDS = ("question", "answer", "wrong_answer")


def is_two_turn(item) -> bool:
    """Whether ``item`` follows the answer / pushback / reply protocol (a bank item)."""
    return getattr(item, "kind", None) != "choice"


def load_dataset(spec: str | os.PathLike, seed: int = 0) -> list:
    """Items named by ``spec`` (see the module docstring); ``seed`` only affects the bank.

    Raises:
        InputError: an unknown name, a missing file, or a file whose first record matches
            neither format (the message names the file, line and expected fields).
    """
    if isinstance(spec, str) and spec in BANK_NAMES:
        return load_bank(seed=seed)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"unknown sycophancy dataset {str(spec)!r}: expected "
                         f"{' or '.join(repr(n) for n in BANK_NAMES)} or an existing .jsonl file")
    where, rec = first_record(path)
    if is_anthropic_record(rec):
        return read_anthropic_jsonl(path)
    if all(k in rec for k in _BANK_FIELDS):
        return read_bank_jsonl(path)
    raise InputError(f"{where}: unrecognised record: expected the fields {', '.join(ANTHROPIC_FIELDS)} "
                     f"(Anthropic sycophancy format) or {', '.join(_BANK_FIELDS)} (question bank)")
