"""A callback for the DDP tests: checks that every rank ends with identical weights and buffers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from activation_cache.window_batches import cut_windows
from ret_toolkit.vq.block_rows import gather_cells


def _flat(tensors) -> torch.Tensor:
    parts = [t.detach().float().flatten() for t in tensors]
    return torch.cat(parts) if parts else torch.zeros(1)


class SameWeightsProbe(Callback):
    def __init__(self, out: str):
        self.out = out
        self.first_batch: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            if isinstance(batch, dict) and "starts" in batch:  # RET: the rows its windows lie in
                x = cut_windows(batch["rows"], batch["starts"], batch["length"])
            elif isinstance(batch, dict) and "rows" in batch:  # VQ: the rows its blocks lie in
                x = gather_cells(batch)
            elif isinstance(batch, dict) and "input_ids" in batch:  # blocking: token batches
                x = batch["input_ids"]
            else:
                x = batch["cells"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
            self.first_batch = x.float().sum().reshape(1)

    def on_train_end(self, trainer, pl_module):
        def same(t: torch.Tensor) -> bool:
            g = pl_module.all_gather(t)
            return bool((g - g[0]).abs().max() == 0)

        result = {
            "world": trainer.world_size,
            "same_parameters": same(_flat(pl_module.parameters())),
            "same_buffers": same(_flat(pl_module.buffers())),
            "different_batches": not same(self.first_batch),
        }
        for name in ("online", "target"):  # RET's two encoders, reported separately
            if hasattr(pl_module, name):
                result[f"same_{name}"] = same(_flat(getattr(pl_module, name).parameters()))
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(result))
