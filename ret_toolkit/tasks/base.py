"""The task interface: a sample (prompt, target, meta), the ``Task`` base class and JSONL export.

Every task text is a sequence of *words* separated by single spaces; the word-level
tokenizer (:func:`ret_toolkit.tasks.task_tokenizer`) maps each word to one token.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["TaskSample", "Task", "prompt_records", "write_prompts_jsonl", "words_until_stop", "STOP_WORDS"]

#: Words that end a model's answer: the tasks' own terminator and the tokenizer's eos.
STOP_WORDS = (".", "<eos>")

# Fields that read_prompts() gives a meaning of its own, so meta may not use them.
_RESERVED_FIELDS = ("id", "text", "messages")


@dataclass(frozen=True)
class TaskSample:
    """One task instance.

    Attributes:
        prompt: what the model is given, whitespace-separated words.
        target: the reference continuation, whitespace-separated words (ends with ``"."``).
        meta: per-sample facts the analyses need; values are ``str`` or ``int``
            (lists/dicts JSON-encoded) so they survive a trip through a prompt file,
            and ``meta["task"]`` is the task name.
    """

    prompt: str
    target: str
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """``prompt + " " + target`` (no dangling space when either part is empty)."""
        return " ".join(part for part in (self.prompt, self.target) if part)


class Task(ABC):
    """A seeded generator of :class:`TaskSample` with its vocabulary and scorer.

    Subclasses set ``name`` and implement :meth:`vocab`, :meth:`sample` and :meth:`score`.
    """

    name: str = ""
    #: How task accuracy decodes completions: ``"greedy"`` when there is one right kind of
    #: answer, ``"sample"`` when many continuations are right (see ``ret_toolkit.planning.decode``).
    decoding: str = "greedy"

    @abstractmethod
    def vocab(self) -> list[str]:
        """Every word the task can produce, in a fixed order, without tokenizer specials."""

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> TaskSample:
        """Draw one sample; all randomness comes from ``rng``."""

    @abstractmethod
    def score(self, sample: TaskSample, output: str) -> bool:
        """Whether ``output`` (the model's words after the prompt) solves ``sample``.

        ``output`` may carry junk after the answer; it is read up to the first stop
        word (``"."`` or ``"<eos>"``, see :func:`words_until_stop`).
        """

    def samples(self, n: int, seed: int) -> list[TaskSample]:
        """``n`` samples drawn from ``np.random.default_rng(seed)``: the same list for the same seed."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        return [self.sample(rng) for _ in range(int(n))]


def words_until_stop(output: str, stop: Iterable[str] = STOP_WORDS) -> tuple[list[str], str | None]:
    """Split ``output`` on whitespace and cut it at the first stop word.

    Returns ``(words before the stop word, the stop word)``, or ``(all words, None)``
    when no stop word occurs.
    """
    stop = set(stop)
    words = output.split()
    for i, w in enumerate(words):
        if w in stop:
            return words[:i], w
    return words, None


def prompt_records(samples: Iterable[TaskSample], task_name: str | None = None) -> list[dict]:
    """The samples' prompts as JSONL-style records, for :class:`activation_cache.extraction.ExtractConfig`
    ``prompts`` in memory (or a prompt file: :func:`write_prompts_jsonl`).

    One record per sample: ``{"id": "<task>-<i>", "text": sample.prompt, **meta}``, ``i`` counting
    from 0. The task name is ``task_name`` or else each sample's ``meta["task"]``. Meta values
    that are neither ``str`` nor ``int`` are JSON-encoded into strings, since the store keeps
    meta columns as strings anyway.
    """
    records = []
    for i, s in enumerate(samples):
        if not s.prompt.strip():
            raise ValueError(f"sample {i} has an empty prompt; a prompt file cannot hold it")
        clash = [k for k in _RESERVED_FIELDS if k in s.meta]
        if clash:
            raise ValueError(f"sample {i}: meta field(s) {clash} clash with the prompt file's own fields")
        name = task_name or s.meta.get("task") or "sample"
        rec = {"id": f"{name}-{i}", "text": s.prompt}
        rec.update({str(k): _meta_value(v) for k, v in s.meta.items()})
        records.append(rec)
    if not records:
        raise ValueError("no samples to write (a prompt file must hold at least one prompt)")
    return records


def write_prompts_jsonl(samples: Iterable[TaskSample], path: str | os.PathLike,
                        task_name: str | None = None) -> Path:
    """Write the samples' prompts as a JSON Lines prompt file for ``activation_cache.prompts.read_prompts``.

    One object a line, as :func:`prompt_records` builds them. Returns the path.
    """
    path = Path(path)
    lines = [json.dumps(rec, ensure_ascii=False) for rec in prompt_records(samples, task_name)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _meta_value(v):
    """``str``/``int`` as they are; anything else (bool, float, list, dict) as a JSON string."""
    if isinstance(v, str) or (isinstance(v, (int, np.integer)) and not isinstance(v, bool)):
        return v if isinstance(v, str) else int(v)
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return json.dumps(v, sort_keys=True, ensure_ascii=False)
