"""Seeded task samples as token batches for :class:`TaskLM`, and task accuracy by greedy decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from activation_cache.errors import InputError
from activation_cache.quiet import no_transformers_bars
from ret_toolkit.planning.decode import task_accuracy_of
from ret_toolkit.tasks import GrammarTask, PathTask, TaskSample, task_tokenizer

TASKS = ("pathfinding", "grammar")


def make_task(name: str, path_nodes: int = 4, n_node_tokens: int = 50):
    """``"pathfinding"`` (``path_nodes`` 4 = short, 6 = long) or ``"grammar"`` (the default PCFG)."""
    if name == "pathfinding":
        return PathTask(path_nodes=path_nodes, n_node_tokens=n_node_tokens)
    if name == "grammar":
        return GrammarTask()
    raise InputError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")


class TaskDataModule(pl.LightningDataModule):
    """Training and held-out samples of one task, tokenised with the task's word-level tokenizer.

    Args:
        task: ``"pathfinding"`` or ``"grammar"``.
        path_nodes: nodes per path for path-finding (4 short, 6 long).
        n_node_tokens: node vocabulary of path-finding.
        n_train, n_val: samples (the validation samples use ``seed + 1``).
        seed: sample seed.
        batch_size: sequences per batch.
        loss_on: ``"target"`` (the answer only), ``"all"`` (every token) or ``"auto"``
            (answer for path-finding, whose prompt is random; all for grammar).
    """

    def __init__(
        self,
        task: str = "pathfinding",
        path_nodes: int = 4,
        n_node_tokens: int = 50,
        n_train: int = 100000,
        n_val: int = 500,
        seed: int = 0,
        batch_size: int = 64,
        loss_on: Literal["auto", "target", "all"] = "auto",
        num_workers: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.task = make_task(task, path_nodes, n_node_tokens)
        self.tokenizer = task_tokenizer(self.task.vocab())
        tok = self.tokenizer
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id = len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        self.loss_on = ("target" if task == "pathfinding" else "all") if loss_on == "auto" else loss_on
        self.train_samples: list[TaskSample] = []
        self.val_samples: list[TaskSample] = []

    def encode(self, sample: TaskSample) -> dict:
        """Token ids of prompt + target + eos, with the loss mask (1 on predicted tokens)."""
        prompt = self.tokenizer(sample.prompt)["input_ids"]
        target = self.tokenizer(sample.target, add_special_tokens=False)["input_ids"] + [self.eos_id]
        ids = prompt + target
        mask = [0] * len(prompt) + [1] * len(target) if self.loss_on == "target" else [0] + [1] * (len(ids) - 1)
        return {"input_ids": ids, "loss_mask": mask}

    def setup(self, stage: str | None = None) -> None:
        if not self.train_samples:
            hp = self.hparams
            self.train_samples = self.task.samples(hp.n_train, hp.seed)
            self.val_samples = self.task.samples(hp.n_val, hp.seed + 1)
            self.train_set = [self.encode(s) for s in self.train_samples]
            self.val_set = [self.encode(s) for s in self.val_samples]

    def collate(self, items: list[dict]) -> dict:
        """Right-pad to the longest: ``input_ids``, ``attention_mask``, ``loss_mask`` (B, L)."""
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        att = torch.zeros(len(items), n, dtype=torch.long)
        loss = torch.zeros(len(items), n, dtype=torch.long)
        for b, it in enumerate(items):
            k = len(it["input_ids"])
            ids[b, :k] = torch.tensor(it["input_ids"])
            att[b, :k] = 1
            loss[b, :k] = torch.tensor(it["loss_mask"])
        return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, generator=g,
                          collate_fn=self.collate, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256, collate_fn=self.collate, num_workers=self.hparams.num_workers)

    def score_generations(self, module, n: int = 200) -> float:
        """Share of the first ``n`` held-out prompts the model answers correctly (see :mod:`.decode`)."""
        return task_accuracy_of(module.model, self.tokenizer, self.task, self.val_samples[:n])["accuracy"]


def export_task_model(module, tokenizer, out_dir: str | Path) -> Path:
    """Save the GPT-2 and its tokenizer as a ``transformers`` directory (``ret-extract --model DIR``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with no_transformers_bars():  # the shard-writing bar of a one-shard model says nothing
        module.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
