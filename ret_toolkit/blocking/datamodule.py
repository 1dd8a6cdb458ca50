"""Chat conversations for a blocked fine-tune, as right-padded token batches with completion masks."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from activation_cache.batching import pad_rows
from activation_cache.errors import InputError
from ret_toolkit.blocking.conversations import encode_conversation

__all__ = ["ConversationDataModule", "collate_conversations"]


def collate_conversations(rows: Sequence[tuple[list[int], list[bool]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of ``(ids, completion)`` rows.

    Returns ``input_ids`` (B, T) int64, ``attention_mask`` (B, T), ``completion`` (B, T) bool
    (completion tokens, where the blocking penalty is taken) and ``labels`` (B, T) int64: the
    token ids at completion tokens, -100 elsewhere (transformers' convention: the loss at
    position t is on token t+1, so the prompt is context only).
    """
    ids, mask = pad_rows([r[0] for r in rows], pad_id, left=False)
    completion, _ = pad_rows([[int(c) for c in r[1]] for r in rows], 0, left=False)
    completion = completion.bool()
    labels = torch.where(completion, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": mask, "completion": completion, "labels": labels}


class ConversationDataModule(pl.LightningDataModule):
    """Conversations from a JSON Lines file (or given in memory), tokenised with the model's chat template.

    Args:
        conversations: a ``.jsonl`` file of ``{"messages": [...]}`` records (any other fields
            are ignored), or the message lists themselves.
        model: the model spec whose tokenizer renders them (None = the embedded model);
            the fine-tuned module is built for the same model (``wired_arguments``).
        chat_template: a template file or text for tokenizers without one.
        batch_size: conversations per step (per device).
        val_fraction: share held out for validation (seeded); 0 for none.
        train_on: ``"last"`` assistant turn or ``"all"`` assistant turns are completion tokens.
        max_length: longest conversation in tokens; a longer one is refused (naming it).
        seed: the split and the shuffling.
    """

    def __init__(self, conversations: str | list[list[dict[str, str]]], model: str | None = None,
                 chat_template: str | None = None, batch_size: int = 8, val_fraction: float = 0.1,
                 train_on: Literal["last", "all"] = "last", max_length: int = 1024, seed: int = 0,
                 num_workers: int = 0):
        super().__init__()
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= val_fraction < 1:
            raise InputError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        self.save_hyperparameters(ignore=["conversations"] if not isinstance(conversations, str) else None)
        self.conversations, self.model, self.chat_template = conversations, model, chat_template
        self.train_rows: list[tuple[list[int], list[bool]]] = []
        self.val_rows: list[tuple[list[int], list[bool]]] = []
        self.pad_id: int | None = None
        if val_fraction == 0:  # no validation split: Lightning then skips the loop (instead of warning it is empty)
            self.val_dataloader = super().val_dataloader

    def _messages(self) -> list[tuple[str, list[dict[str, Any]]]]:
        if not isinstance(self.conversations, str):
            return [(f"conversation {i}", list(m)) for i, m in enumerate(self.conversations)]
        from activation_cache.prompts import read_prompts

        if not Path(self.conversations).suffix == ".jsonl":
            raise InputError(f"conversations must be a .jsonl file of chat messages, got {self.conversations}")
        out = []
        for p in read_prompts(self.conversations):
            if p.messages is None:
                raise InputError(f"{p.source}: conversation {p.prompt_id!r} has text, not messages")
            out.append((f"{p.source} ({p.prompt_id})", list(p.messages)))
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows:
            return
        from activation_cache.models import load_tokenizer

        tok = load_tokenizer(self.model, chat_template=self.chat_template, progress=False)
        self.pad_id = tok.pad_token_id
        rows = []
        for where, messages in self._messages():
            ids, completion = encode_conversation(tok, messages, self.hparams.train_on, where)
            if len(ids) > self.hparams.max_length:
                raise InputError(f"{where}: {len(ids)} tokens, more than max_length {self.hparams.max_length}")
            rows.append((ids, completion))
        if not rows:
            raise InputError("no conversations given")
        order = np.random.default_rng(self.hparams.seed).permutation(len(rows))
        n_val = int(round(self.hparams.val_fraction * len(rows)))
        if n_val >= len(rows):
            raise InputError(f"val_fraction {self.hparams.val_fraction} leaves no training conversation of {len(rows)}")
        self.val_rows = [rows[i] for i in sorted(order[:n_val])]
        self.train_rows = [rows[i] for i in sorted(order[n_val:])]

    def _loader(self, rows, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(rows, batch_size=self.hparams.batch_size, shuffle=shuffle, generator=g,
                          num_workers=self.hparams.num_workers,
                          collate_fn=partial(collate_conversations, pad_id=self.pad_id))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rows, True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_rows, False) if self.val_rows else []
