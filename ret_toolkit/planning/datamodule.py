"""Seeded task samples as token batches for :class:`TaskLM`, and task accuracy by greedy decoding.

Training regimes for path-finding (each a ``data.*`` key of ``ret-train task fit``).
Plain next-token training over a fixed sample set is the faithful setting; the
others are what the literature reports against the shortcut that makes such
models goal-blind (after the first hop every step is a lookup of the previous
node's out-edge, Bachmann & Nagarajan 2024):

* ``online``: fresh graphs every step (seeded per step and rank), never an epoch
  over the same set; the held-out set stays fixed.
* ``corrupt`` / ``corrupt_mode``: each teacher-forced answer node is replaced, with
  probability ``corrupt``, by a random node (``"random"``) or by ``<pad>`` as a mask
  (``"mask"``) in the *input* only; the labels stay the clean path, so the lookup
  of the previous node no longer predicts the next one (Frydenlund 2024-2025).
  ``corrupt=1, corrupt_mode="mask"`` is teacherless training.
* ``reverse``: the target written goal -> start, where every step is a backward
  lookup: a positive control that needs no plan.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from activation_cache.errors import InputError
from activation_cache.quiet import no_transformers_bars
from ret_toolkit.planning.decode import is_teacherless, task_accuracy_of
from ret_toolkit.planning.settings import TASKS
from ret_toolkit.tasks import GrammarTask, PathTask, TaskSample, task_tokenizer

CORRUPT_MODES = ("random", "mask")


def make_task(name: str, path_nodes: int = 4, n_node_tokens: int = 50, reverse: bool = False):
    """``"pathfinding"`` (``path_nodes`` 4 = short, 6 = long; ``reverse``: target goal -> start)
    or ``"grammar"`` (the default PCFG)."""
    if name == "pathfinding":
        return PathTask(path_nodes=path_nodes, n_node_tokens=n_node_tokens, reverse=reverse)
    if name == "grammar":
        if reverse:
            raise InputError("reverse applies to the path-finding task only")
        return GrammarTask()
    raise InputError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")


class OnlineBatches(IterableDataset):
    """``steps`` fresh batches per pass, batch i of pass e drawn from ``default_rng([seed, rank, e, i])``."""

    def __init__(self, dm: "TaskDataModule", steps: int, rank: int = 0):
        self.dm, self.steps, self.rank, self.passes = dm, steps, rank, 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        dm, e = self.dm, self.passes
        self.passes += 1
        for i in range(self.steps):
            rng = np.random.default_rng([dm.hparams.seed, self.rank, e, i])
            batch = [dm.encode(dm.task.sample(rng)) for _ in range(dm.hparams.batch_size)]
            yield dm.collate(batch, corrupt_rng=rng)


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
        online: fresh samples every training step (``n_train // batch_size`` steps per
            epoch) instead of epochs over ``n_train`` fixed samples.
        corrupt: probability (0..1) that a teacher-forced answer node is replaced in the
            training input (path-finding; labels stay clean; validation is never corrupted).
        corrupt_mode: ``"random"`` (a random node token) or ``"mask"`` (``<pad>``).
        reverse: path-finding targets written goal -> start (the positive control).
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
        online: bool = False,
        corrupt: float = 0.0,
        corrupt_mode: Literal["random", "mask"] = "random",
        reverse: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= corrupt <= 1.0:
            raise InputError(f"corrupt must be a probability in [0, 1], got {corrupt}")
        if corrupt_mode not in CORRUPT_MODES:
            raise InputError(f"unknown corrupt_mode {corrupt_mode!r}; choose from {', '.join(CORRUPT_MODES)}")
        if corrupt and task != "pathfinding":
            raise InputError("corrupt applies to the path-finding task only (its answer is a node sequence)")
        self.task = make_task(task, path_nodes, n_node_tokens, reverse)
        self.tokenizer = task_tokenizer(self.task.vocab())
        tok = self.tokenizer
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id = len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        self.loss_on = ("target" if task == "pathfinding" else "all") if loss_on == "auto" else loss_on
        self.node_ids = (torch.tensor(tok.convert_tokens_to_ids(self.task.node_names()))
                         if task == "pathfinding" else None)
        self.train_samples: list[TaskSample] = []
        self.val_samples: list[TaskSample] = []
        self._corrupt_rng = np.random.default_rng([seed, 7])

    def encode(self, sample: TaskSample) -> dict:
        """Token ids of prompt + target + eos, the loss mask (1 on predicted tokens) and the
        answer mask (1 on the answer's node tokens, the ones ``corrupt`` may replace)."""
        prompt = self.tokenizer(sample.prompt)["input_ids"]
        target = self.tokenizer(sample.target, add_special_tokens=False)["input_ids"] + [self.eos_id]
        ids = prompt + target
        mask = [0] * len(prompt) + [1] * len(target) if self.loss_on == "target" else [0] + [1] * (len(ids) - 1)
        answer = [0] * len(prompt) + [1] * (len(target) - 2) + [0, 0]  # not "." nor <eos>
        return {"input_ids": ids, "loss_mask": mask, "answer_mask": answer}

    def setup(self, stage: str | None = None) -> None:
        if not self.val_samples:
            hp = self.hparams
            # online training draws its samples per step
            self.train_samples = [] if hp.online else self.task.samples(hp.n_train, hp.seed)
            self.val_samples = self.task.samples(hp.n_val, hp.seed + 1)
            self.train_set = [self.encode(s) for s in self.train_samples]
            self.val_set = [self.encode(s) for s in self.val_samples]

    def collate(self, items: list[dict], corrupt_rng: np.random.Generator | None = None) -> dict:
        """Right-pad to the longest: ``input_ids``, ``attention_mask``, ``loss_mask`` (B, L).

        With ``corrupt_rng``, answer nodes of ``input_ids`` are replaced as ``corrupt``
        says and ``labels`` (B, L) holds the clean ids.
        """
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        att = torch.zeros(len(items), n, dtype=torch.long)
        loss = torch.zeros(len(items), n, dtype=torch.long)
        answer = torch.zeros(len(items), n, dtype=torch.bool)
        for b, it in enumerate(items):
            k = len(it["input_ids"])
            ids[b, :k] = torch.tensor(it["input_ids"])
            att[b, :k] = 1
            loss[b, :k] = torch.tensor(it["loss_mask"])
            answer[b, :k] = torch.tensor(it["answer_mask"], dtype=torch.bool)
        batch = {"input_ids": ids, "attention_mask": att, "loss_mask": loss}
        if corrupt_rng is not None and self.hparams.corrupt > 0:
            hit = answer & torch.from_numpy(corrupt_rng.random(ids.shape) < self.hparams.corrupt)
            if self.hparams.corrupt_mode == "mask":
                fill = torch.full_like(ids, self.pad_id)
            else:
                fill = self.node_ids[torch.from_numpy(corrupt_rng.integers(0, len(self.node_ids), ids.shape))]
            batch["labels"] = ids
            batch["input_ids"] = torch.where(hit, fill, ids)
        return batch

    def train_collate(self, items: list[dict]) -> dict:
        return self.collate(items, corrupt_rng=self._corrupt_rng)

    def train_dataloader(self):
        if self.hparams.online:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            return DataLoader(OnlineBatches(self, self.hparams.n_train // self.hparams.batch_size, rank),
                              batch_size=None, num_workers=0)
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, generator=g,
                          collate_fn=self.train_collate, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256, collate_fn=self.collate, num_workers=self.hparams.num_workers)

    def score_generations(self, module, n: int = 200) -> float:
        """Share of the first ``n`` held-out prompts the model answers correctly (see :mod:`.decode`)."""
        return task_accuracy_of(module.model, self.tokenizer, self.task, self.val_samples[:n],
                                teacherless=is_teacherless(dict(self.hparams)))["accuracy"]


#: The data module's settings, saved next to an exported model (what ``ret-planning`` reads back).
TASK_FILE = "task.json"


def export_task_model(module, tokenizer, out_dir: str | Path, task: dict | None = None) -> Path:
    """Save the GPT-2 and its tokenizer as a ``transformers`` directory (``ret-extract --model DIR``).

    ``task``: the :class:`TaskDataModule` hyperparameters (``dict(dm.hparams)``), written to
    ``task.json`` so that the analyses know the task's settings (such as ``reverse``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with no_transformers_bars():  # the shard-writing bar of a one-shard model says nothing
        module.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if task is not None:
        (out / TASK_FILE).write_text(json.dumps(dict(task), indent=2, default=str))
    return out


def task_settings(model_dir: str | Path) -> dict:
    """The ``task.json`` of an exported task model; ``{}`` when it has none (an older export)."""
    path = Path(model_dir) / TASK_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
