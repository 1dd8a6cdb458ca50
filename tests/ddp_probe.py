"""A callback for the DDP test: checks that every rank ends with identical weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class SameWeightsProbe(Callback):
    def __init__(self, out: str):
        self.out = out
        self.first_batch: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            self.first_batch = x.float().sum().reshape(1)

    def on_train_end(self, trainer, pl_module):
        def flat(module):
            return torch.cat([p.detach().flatten() for p in module.parameters()])

        online = pl_module.all_gather(flat(pl_module.online))
        target = pl_module.all_gather(flat(pl_module.target))
        batches = pl_module.all_gather(self.first_batch)
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({
                "world": int(online.shape[0]),
                "same_online": bool((online - online[0]).abs().max() == 0),
                "same_target": bool((target - target[0]).abs().max() == 0),
                "different_batches": bool((batches - batches[0]).abs().max() > 0),
            }))
