"""Batches of prompts for the model: fixed-size or length-aware, and padding them.

An extraction walks its prompts in *windows*: runs of consecutive prompts
that are traced, then written to the store in prompt order as one commit.

- ``batch_size`` mode (the default): each window is one batch of
  ``batch_size`` consecutive prompts, so a commit is one batch, as before.
- ``batch_tokens`` mode (``--batch-tokens N``): a window is as many
  consecutive prompts as fill ``window_tokens`` tokens; inside it the prompts
  are sorted by length and packed into batches whose padded size
  (longest prompt + generated tokens, times rows) stays within ``N``, so
  little compute goes to padding. The window's sequences are still written
  in prompt order.

Windows are planned greedily from the first uncommitted prompt. A store is
committed only at window ends, so a resumed run plans the same windows and
batches as an uninterrupted one: the store does not depend on where a run
stopped, nor on the batching (only its numerics may, within a model's
batch-composition noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

__all__ = ["Window", "left_pad", "pad_rows", "padding_share", "plan_windows", "until_stop"]


@dataclass(frozen=True)
class Window:
    """Prompts ``start:stop`` (one commit), traced as ``batches`` (lists of prompt indices, in row order)."""

    start: int
    stop: int
    batches: tuple[tuple[int, ...], ...]

    @property
    def in_prompt_order(self) -> bool:
        """True when the batches already list the window's prompts in order (no reordering needed)."""
        flat = [i for b in self.batches for i in b]
        return flat == list(range(self.start, self.stop))


def plan_windows(lengths: Sequence[int], start: int = 0, *, batch_size: int = 8, batch_tokens: int | None = None,
                 generate: int = 0, window_tokens: int | None = None) -> Iterator[Window]:
    """The windows and batches that trace prompts ``start..len(lengths)-1``.

    Args:
        lengths: tokens per prompt (after truncation).
        start: first prompt to trace (the store's ``n_committed``).
        batch_size: prompts per batch without ``batch_tokens``.
        batch_tokens: token budget of one batch: ``rows * (longest prompt + generate)``;
            a prompt longer than the budget gets a batch of its own.
        generate: new tokens per prompt in generate mode (counted in the budget).
        window_tokens: prompt tokens per window in ``batch_tokens`` mode
            (default ``8 * batch_tokens``); bounds the results held before a commit.
    """
    n = len(lengths)
    if batch_tokens is None:
        for lo in range(start, n, batch_size):
            hi = min(lo + batch_size, n)
            yield Window(lo, hi, (tuple(range(lo, hi)),))
        return
    budget = window_tokens or 8 * batch_tokens
    lo = start
    while lo < n:
        hi, total = lo, 0
        while hi < n and (hi == lo or total + lengths[hi] <= budget):
            total += lengths[hi]
            hi += 1
        yield Window(lo, hi, tuple(_pack(sorted(range(lo, hi), key=lambda i: (lengths[i], i)), lengths,
                                         batch_tokens, generate)))
        lo = hi


def _pack(order: list[int], lengths: Sequence[int], batch_tokens: int, generate: int) -> Iterator[tuple[int, ...]]:
    """Greedy packing of prompts sorted by length: each batch's padded size stays within the budget."""
    batch: list[int] = []
    for i in order:
        width = lengths[i] + generate  # sorted ascending: the newest prompt is the longest
        if batch and (len(batch) + 1) * width > batch_tokens:
            yield tuple(batch)
            batch = []
        batch.append(i)
    if batch:
        yield tuple(batch)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one batch: ``(input_ids, attention_mask)``, int64 (B, T_max).

    ``left=True`` for ``generate`` (new tokens follow every prompt directly); ``left=False``
    keeps real tokens at positions 0..T-1 for a teacher-forced forward.
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def until_stop(ids: Sequence[int], stop: set[int]) -> list[int]:
    """``ids`` up to, not including, the first id in ``stop`` (as the trajectory store keeps them)."""
    out = []
    for t in ids:
        if t in stop:
            break
        out.append(int(t))
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Token-id lists as a left-padded batch ``{"input_ids", "attention_mask"}``, int64 (B, T_max), for ``generate``."""
    ids, mask = pad_rows(rows, pad_id, left=True)
    return {"input_ids": ids, "attention_mask": mask}


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int], generate: int = 0) -> float:
    """Share of the padded token slots of ``batches`` that are padding (0 = none)."""
    slots = real = 0
    for b in batches:
        width = max(lengths[i] for i in b) + generate
        slots += width * len(b)
        real += sum(lengths[i] + generate for i in b)
    return 1 - real / slots if slots else 0.0
