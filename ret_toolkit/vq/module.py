"""VQ-VAE information probe as a LightningModule (docs/architecture.md §3.2).

    cells (B, N, D) --standardise per layer--> SetEncoder --> e (B, c)
        --Codebook (nearest unit code, straight-through)--> q, code (B,)
        --CellDecoder(q, layer, pos)--> reconstructed cells (B, N, D)

    loss = MSE(recon, cells) + commitment_weight * |e - sg(q)|^2
         [+ |sg(e) - q|^2 when ema=False]
         + cosine_weight * mean cos^2 between codes + entropy_weight * usage-entropy term

Health, logged every epoch on the validation blocks (training blocks if there
is no validation loop): ``code_perplexity`` (exp of the code-usage entropy;
K = all codes equally used), ``dead_code_fraction`` (codes no block chose),
``recon_ev`` (explained variance of the standardised cells).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from activation_cache.errors import InputError
from ret_toolkit.hparams import check_hparams
from ret_toolkit.vq.block_rows import gather_cells
from ret_toolkit.vq.codebook import Codebook, all_reduce_sum, usage_entropy_loss
from ret_toolkit.vq.encoder import CellDecoder, SetEncoder


class VQModule(pl.LightningModule):
    """Compress a block of (layer, position) cells into one of K discrete codes.

    Args:
        d_input: hidden size D of a cell.
        n_layers: number of layers in the block (cells carry an index 0..n_layers-1).
        max_offset: position offsets beyond ±max_offset share one embedding.
        dim, depth, heads: width, transformer layers and heads of the set encoder.
        code_dim: size of the (unit-norm) codes.
        num_codes: K, the codebook size.
        ema: update codes by EMA of their assigned encodings (default); False
            learns them by gradient with the usual codebook loss.
        decay: EMA decay per step.
        dead_threshold: restart a code used by fewer than this many blocks per
            step on average (EMA); 0 disables restarts.
        commitment_weight, cosine_weight, entropy_weight: loss weights.
        entropy_temperature: softmax temperature over cosine similarities for the entropy term.
        lr, weight_decay: AdamW (no decay on biases, norms, embeddings, codebook).
        seed: seed of the codebook initialisation and restart draws.
        source_model, block_info: provenance (the store's model, the resolved block
            spec and anchor), filled by the data module; encoding blocks of
            another model or spec is refused.
    """

    def __init__(
        self,
        d_input: int,
        n_layers: int = 1,
        max_offset: int = 64,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        code_dim: int = 32,
        num_codes: int = 32,
        ema: bool = True,
        decay: float = 0.9,
        dead_threshold: float = 0.5,
        commitment_weight: float = 0.25,
        cosine_weight: float = 0.1,
        entropy_weight: float = 0.1,
        entropy_temperature: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
        source_model: str = "",
        block_info: dict | None = None,
    ):
        super().__init__()
        check_hparams("model", locals(), {
            "d_input": "count", "n_layers": "count", "max_offset": "count", "dim": "count", "depth": "count",
            "heads": "count", "code_dim": "count", "decay": "unit", "dead_threshold": "non_negative",
            "commitment_weight": "non_negative", "cosine_weight": "non_negative", "entropy_weight": "non_negative",
            "entropy_temperature": "positive", "lr": "positive", "weight_decay": "non_negative"})
        if num_codes < 2:
            raise InputError(f"model.num_codes must be an integer >= 2, got {num_codes!r}")
        self.save_hyperparameters()
        self.encoder = SetEncoder(d_input, n_layers, max_offset, dim, depth, heads, code_dim)
        self.codebook = Codebook(num_codes, code_dim, decay if ema else 1.0, dead_threshold, seed)
        self.decoder = CellDecoder(d_input, n_layers, max_offset, dim, code_dim)
        # the codebook parameter needs a gradient only if some loss term reaches it
        self.codebook.embed.requires_grad_(not ema or cosine_weight > 0 or entropy_weight > 0)
        self.register_buffer("cell_mean", torch.zeros(n_layers, d_input))
        self.register_buffer("cell_std", torch.ones(n_layers, d_input))
        self._pending: tuple[Tensor, Tensor] | None = None
        self._code_step = 0
        self._health: dict[str, dict[str, Tensor]] = {}
        self.health_history: list[dict[str, float]] = []

    # ---- standardisation (per layer, travels with the checkpoint) ----

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        stats = getattr(dm, "standardization", None)
        if stats is not None and not bool(self.cell_mean.abs().sum() > 0 or (self.cell_std != 1).any()):
            self.set_standardization(*stats)

    def set_standardization(self, mean: Any, std: Any) -> None:
        """Per-layer statistics of the cells, (n_layers, D) each (or flat n_layers*D)."""
        shape = (self.hparams.n_layers, self.hparams.d_input)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != math.prod(shape) or std.numel() != math.prod(shape):
            raise InputError(f"standardisation statistics have {mean.numel()} and {std.numel()} values; expected {shape}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise InputError("standardisation statistics contain NaN or inf")
        self.cell_mean.copy_(mean.reshape(shape))
        self.cell_std.copy_(std.reshape(shape).clamp_min(1e-6))

    def standardize(self, cells: Tensor, layer: Tensor) -> Tensor:
        if cells.shape[-1] != self.hparams.d_input:
            raise InputError(f"cells have size {cells.shape[-1]} but this VQ model was built for d_input="
                             f"{self.hparams.d_input} (store from another model?)")
        return (cells.float() - self.cell_mean[layer]) / self.cell_std[layer]

    # ---- the model ----

    @staticmethod
    def _cells(batch: dict) -> Tensor:
        """The padded cells (B, N, D) of a batch: ``collate_cells``' own, or gathered from a ``BlockRows`` batch."""
        return batch["cells"] if "cells" in batch else gather_cells(batch)

    def encode(self, batch: dict) -> Tensor:
        """Pre-quantisation encodings (B, code_dim) of a collated batch (``collate_cells``, or ``BlockRows``')."""
        x = self.standardize(self._cells(batch), batch["layer"])
        return self.encoder(x, batch["layer"], batch["pos"], batch["mask"])

    @torch.no_grad()
    def codes(self, batch: dict) -> Tensor:
        """Discrete code of each block: int64 (B,)."""
        return self.codebook.codes_of(F.normalize(self.encode(batch), dim=-1))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Encode, quantise and decode; returns the loss terms, codes and encodings."""
        x = self.standardize(self._cells(batch), batch["layer"])
        mask = batch["mask"]
        e = self.encoder(x, batch["layer"], batch["pos"], mask)
        q, codes, sim = self.codebook(e)
        recon = self.decoder(q, batch["layer"], batch["pos"])
        m = mask.unsqueeze(-1).float()
        n_cells = m.sum() * x.shape[-1]
        sse = ((recon - x) ** 2 * m).sum()
        e_unit = F.normalize(e, dim=-1)
        out = {
            "recon": sse / n_cells,
            "commit": F.mse_loss(e_unit, q.detach()),
            "cosine": self.codebook.cosine_penalty(),
            "entropy": usage_entropy_loss(sim, self.hparams.entropy_temperature),
            "codes": codes, "e": e_unit.detach(), "sse": sse.detach(),
            "x_sum": (x * m).sum((0, 1)).detach(), "x_sq": ((x * x) * m).sum((0, 1)).detach(),
            "n_cells": m.sum().detach(),
        }
        if not self.hparams.ema:
            out["codebook"] = F.mse_loss(F.normalize(self.codebook.embed, dim=-1)[codes], e_unit.detach())
        return out

    def _step(self, batch: dict, stage: str) -> Tensor:
        hp = self.hparams
        out = self(batch)
        loss = (out["recon"] + hp.commitment_weight * out["commit"] + hp.cosine_weight * out["cosine"]
                + hp.entropy_weight * out["entropy"] + out.get("codebook", 0.0))
        bs = len(out["codes"])
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bs)
        for key in ("recon", "commit", "cosine", "entropy"):
            self.log(f"{stage}/{key}", out[key], on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        if stage == "train":
            self._pending = (out["e"], out["codes"])
        self._accumulate(out, stage)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after optimizer.step(): the codebook update sees the same weights on every rank;
        # under gradient accumulation only the last micro-batch of a step updates the codes
        step = self.trainer.global_step
        if step > self._code_step and self._pending is not None:
            n = self.codebook.update(*self._pending, step=step)
            if n:
                self.log("train/restarts", float(n), on_step=True, on_epoch=False, reduce_fx="sum")
            self._code_step = step
        self._pending = None

    # ---- health metrics ----
    #
    # Sums are kept per stage. Validation blocks come from fixed weights and are preferred;
    # an epoch whose validation loop saw no block (none configured, or an empty split)
    # reports its training blocks instead.

    def _zero_health(self) -> dict[str, Tensor]:
        K, D = self.hparams.num_codes, self.hparams.d_input
        z = lambda *shape: torch.zeros(*shape, device=self.device)  # noqa: E731
        return {"counts": z(K), "sse": z(()), "x_sum": z(D), "x_sq": z(D), "n": z(())}

    def _accumulate(self, out: dict, stage: str) -> None:
        h = self._health.setdefault(stage, self._zero_health())
        h["counts"] += torch.bincount(out["codes"], minlength=self.hparams.num_codes).float()
        h["sse"] += out["sse"]
        h["x_sum"] += out["x_sum"]
        h["x_sq"] += out["x_sq"]
        h["n"] += out["n_cells"]

    def _log_health(self, stage: str) -> bool:
        """Collective under DDP (every rank calls it): all-reduce one stage's sums, log, record.
        Returns False (logging nothing) when no rank saw a block."""
        local = self._health.pop(stage, None) or self._zero_health()  # a rank without batches still joins
        h = {k: all_reduce_sum(v) for k, v in local.items()}
        if float(h["n"]) == 0:
            return False
        p = h["counts"] / h["counts"].sum()
        perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        dead = float((h["counts"] == 0).float().mean())
        sst = float((h["x_sq"] - h["x_sum"] ** 2 / h["n"]).sum())
        ev = 1.0 - float(h["sse"]) / sst if sst > 0 else float("nan")
        metrics = {"code_perplexity": perplexity, "dead_code_fraction": dead, "recon_ev": ev}
        for k, v in metrics.items():
            self.log(k, v, on_step=False, on_epoch=True, prog_bar=k != "recon_ev")
        self.health_history.append({"epoch": self.current_epoch, "on": stage, **metrics})
        return True

    def on_validation_epoch_start(self) -> None:
        self._health.pop("val", None)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._health.pop("val", None)
            return
        if self._log_health("val"):
            self._val_health_epoch = self.current_epoch

    def on_train_epoch_start(self) -> None:
        self._health.pop("train", None)

    def on_train_epoch_end(self) -> None:
        if getattr(self, "_val_health_epoch", None) != self.current_epoch:
            self._log_health("train")
        self._health.pop("train", None)

    # ---- optimisation ----

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for n, p in self.named_parameters() if p.requires_grad and p.dim() >= 2
                 and "where" not in n and "codebook" not in n]
        ids = {id(p) for p in decay}
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                  {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0}],
                                 lr=self.hparams.lr)
