"""The RET encoder as a LightningModule (BYOL / JEPA style, docs/architecture.md §3.1).

    online   f_θ : h_{t-w+1..t}          -> z_t
    target   f_ξ : EMA of f_θ, no grad   -> z'_t
    predictor g_φ(z_t, k)                -> ẑ_{t+k} ≈ sg(z'_{t+k}),  k = 1..K

    loss = mean_k mean_t (2 - 2 cos(ẑ_{t+k}, z'_{t+k}))
           + var_weight * VICReg-variance(z) + cov_weight * VICReg-covariance(z)

A batch is (B, L, D) raw hidden states, each row L consecutive tokens of one
sequence, L >= window + max_horizon, or a ``WindowBatches`` batch (the rows the
windows lie in and their starts), whose windows are cut here, on the module's
device. Every window position that has a target k steps ahead is used as an
anchor, so longer rows just give more anchors.

Nothing here is rank-0-only: the EMA runs on every rank after the optimizer
step (so from identical, already all-reduced weights), and the collapse
decision is taken from all-gathered z and broadcast.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from activation_cache.errors import InputError
from activation_cache.layers import spec_names
from activation_cache.window_batches import cut_windows
from ret_toolkit.hparams import check_hparams
from ret_toolkit.macro.encoder import (
    CausalWindowEncoder,
    HorizonPredictor,
    covariance_loss,
    normalized_mse,
    variance_loss,
)
from ret_toolkit.macro.rank import CollapseWatch


def nearest_centroid(z: Tensor, centroids: Tensor, metric: str = "cosine") -> Tensor:
    """Index of the nearest centroid for each z: (N, d), (K, d) -> int64 (N,).

    ``"cosine"``: z is L2-normalised first (centroids of a k-means on normalised z).
    """
    z = z.float()
    if metric == "cosine":
        z = torch.nn.functional.normalize(z, dim=-1)
    elif metric != "euclidean":
        raise ValueError(f"unknown centroid metric {metric!r}; use 'cosine' or 'euclidean'")
    return torch.cdist(z, centroids.to(z.device).float()).argmin(dim=1)


def cosine_momentum(step: int, total: float, start: float, end: float) -> float:
    """EMA momentum annealed from `start` (step 0) to `end` (step >= total) on a half cosine."""
    if not total or not math.isfinite(total) or total <= 0:
        return start
    frac = min(max(step / total, 0.0), 1.0)
    return end - (end - start) * (1 + math.cos(math.pi * frac)) / 2


class RETModule(CollapseWatch, pl.LightningModule):
    """Learns a causal macro variable z_t (d = z_dim) from windows of hidden states.

    Args:
        d_input: hidden size D of the stored layer(s); batches must match it.
        window: tokens w the encoder sees (z_t depends on h_{t-w+1..t} only).
        z_dim: size d of the macro variable.
        hidden: width of the encoder.
        max_horizon: K; the predictor is trained on all k = 1..K every step.
        predictor_hidden: width of the predictor.
        predictor_horizon: True (default, the method's g(z_t, k)): the predictor
            is told the horizon k. False: the horizon-blind ablation, one
            prediction for all k = 1..K, which rewards z that stays the same over
            K tokens directly (``benchmarks/bench_ret_ablation.py`` compares the two
            on a tuning split, with seeds).
        ema_start, ema_end: target-encoder momentum, cosine-annealed over all training steps.
        lr, weight_decay: AdamW (no decay on biases / norms).
        lr_schedule: "cosine" (to lr/100 over all steps) or "constant".
        var_weight, cov_weight: VICReg-style terms on the online z (0 disables,
            the default: they spread z over all dimensions, which fragments the
            groups; the EMA target and the collapse guard already cover collapse).
        collapse_threshold: stop training when the effective rank of z falls
            below this (checked after every validation, or every training epoch
            if there is no validation); 0 disables.
        rank_samples: z vectors (one per window) kept per epoch, over all ranks,
            to estimate the effective rank.
        source_model, source_layers: provenance, filled from the data module (the
            store's ``model`` attribute and its layer names, ``["10", "15"]``;
            recorded as that list); encoding a store of another model or layer
            set is refused.
    """

    def __init__(
        self,
        d_input: int,
        window: int = 8,
        z_dim: int = 16,
        hidden: int = 256,
        max_horizon: int = 8,
        predictor_hidden: int = 256,
        predictor_horizon: bool = True,
        ema_start: float = 0.99,
        ema_end: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        var_weight: float = 0.0,
        cov_weight: float = 0.0,
        collapse_threshold: float = 2.0,
        rank_samples: int = 4096,
        source_model: str = "",
        source_layers: list[str] | str | None = None,
    ):
        super().__init__()
        check_hparams("model", locals(), {
            "d_input": "count", "window": "count", "z_dim": "count", "hidden": "count", "max_horizon": "count",
            "predictor_hidden": "count", "ema_start": "unit", "ema_end": "unit", "lr": "positive",
            "weight_decay": "non_negative", "var_weight": "non_negative", "cov_weight": "non_negative",
            "collapse_threshold": "non_negative", "rank_samples": "count"})
        if ema_start > ema_end:
            raise InputError(f"model.ema_start must be <= model.ema_end, got {ema_start} > {ema_end}")
        self.save_hyperparameters()
        # one form in every checkpoint: the list of store layer names (earlier checkpoints
        # recorded the comma-joined string, which still loads)
        self.hparams.source_layers = (spec_names(source_layers) if isinstance(source_layers, str)
                                      else [str(n) for n in source_layers or ()])

        self.online = CausalWindowEncoder(d_input, window, hidden, z_dim)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.predictor = HorizonPredictor(z_dim, predictor_hidden, max_horizon, use_horizon=predictor_horizon)

        # buffers, so the statistics travel with the checkpoint
        self.register_buffer("h_mean", torch.zeros(d_input))
        self.register_buffer("h_std", torch.ones(d_input))

        self._total_steps: float = float("inf")
        self._ema_step = 0
        self._init_watch()
        #: k-means centroids of z, (K, d), once macrostates are fitted (travel in the checkpoint)
        self.centroids: Tensor | None = None
        #: how ``assign`` compares z with the centroids: "cosine" (L2-normalised z, what
        #: ``ret-macro`` fits) or "euclidean" (centroids set by hand, and checkpoints whose
        #: macrostates record no metric)
        self.centroid_metric: str = "euclidean"

    # ---- data statistics & macrostate centroids travel with the checkpoint ----

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        stats = getattr(dm, "standardization", None)
        if stats is not None and not self._stats_set():
            self.set_standardization(*stats)

    def _stats_set(self) -> bool:
        return bool(self.h_mean.abs().sum() > 0 or (self.h_std != 1).any())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.centroids is not None:
            checkpoint["macrostates"] = {"centroids": self.centroids.detach().cpu(), "metric": self.centroid_metric}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        macro = checkpoint.get("macrostates")
        self.centroids = None if macro is None else macro["centroids"]
        # checkpoints written before the cosine k-means have no "metric": their centroids are Euclidean
        self.centroid_metric = "euclidean" if macro is None else str(macro.get("metric", "euclidean"))

    @torch.no_grad()
    def assign(self, z: Tensor) -> Tensor:
        """Macrostate (nearest centroid) of each z: (N, d) -> int64 (N,).

        With ``centroid_metric == "cosine"`` (what :func:`~ret_toolkit.macro.fit_centroids`
        fits) z is L2-normalised first, as the training loss compares directions.
        """
        if self.centroids is None:
            raise InputError("this RET checkpoint has no macrostates yet; run `ret-macro` (k-means) first")
        return nearest_centroid(z, self.centroids, self.centroid_metric)

    # ---- standardisation & encoding (eval-time API) ----

    def set_standardization(self, mean: Any, std: Any) -> None:
        """Per-dimension statistics of the hidden states, (D,) each; saved with the checkpoint."""
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        d = self.hparams.d_input
        if mean.shape != (d,) or std.shape != (d,):
            raise InputError(
                f"standardisation statistics have shapes {tuple(mean.shape)}, {tuple(std.shape)}; expected ({d},)"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise InputError("standardisation statistics contain NaN or inf")
        self.h_mean.copy_(mean)
        self.h_std.copy_(std.clamp_min(1e-6))  # constant dims: avoid 0/0, they are 0 after centring anyway

    def standardize(self, x: Tensor) -> Tensor:
        """(..., D) raw (any float dtype) -> (..., D) float32 standardised."""
        if x.shape[-1] != self.hparams.d_input:
            raise InputError(
                f"hidden states have size {x.shape[-1]} but this RET model was built for d_input="
                f"{self.hparams.d_input} (store from another model or layer set?)"
            )
        return (x.to(self.h_mean.dtype) - self.h_mean) / self.h_std

    def encode(self, x: Tensor) -> Tensor:
        """Online z for every full window: (B, T, D) -> (B, T-w+1, d); (T, D) -> (T-w+1, d)."""
        if x.dim() == 2:
            return self.encode(x.unsqueeze(0))[0]
        if x.dim() != 3:
            raise InputError(f"expected hidden states of shape (B, T, D) or (T, D), got {tuple(x.shape)}")
        return self.online(self.standardize(x))

    forward = encode

    @torch.no_grad()
    def encode_sequence(self, h: Any, chunk_size: int = 4096) -> Tensor:
        """One z per token of a whole sequence: (T, D) -> (T, d).

        The first w-1 tokens have no full window; the window is left-padded by
        repeating the first row, so z_0 is the encoding of a sequence that
        "started long ago" in state h_0. Long sequences go through in chunks
        (overlapping by w-1 rows), so memory stays bounded and results match
        the unchunked pass.
        """
        h = torch.as_tensor(h, device=self.device)
        if h.dim() != 2 or h.shape[0] == 0:
            raise InputError(f"encode_sequence needs a non-empty (T, D) array, got shape {tuple(h.shape)}")
        w = self.hparams.window
        h = torch.cat([h[:1].expand(w - 1, -1), h])
        T = h.shape[0] - (w - 1)
        out = [self.encode(h[s : s + chunk_size + w - 1]) for s in range(0, T, chunk_size)]
        return torch.cat(out)

    # ---- training ----

    @staticmethod
    def _unpack(batch: Any) -> Tensor:
        if isinstance(batch, dict) and "rows" in batch:  # a WindowBatches batch: cut the windows here
            return cut_windows(batch["rows"], batch["starts"], batch["length"])
        if isinstance(batch, dict):
            return batch["x"]
        if isinstance(batch, (list, tuple)):
            return batch[0]
        return batch

    def _step(self, batch: Any, stage: str) -> Tensor:
        x = self._unpack(batch)
        K, w = self.hparams.max_horizon, self.hparams.window
        if x.dim() != 3 or x.shape[1] < w + K:
            raise InputError(
                f"RET batches must be (B, L, D) with L >= window + max_horizon = {w + K}, got {tuple(x.shape)}"
            )
        h = self.standardize(x)
        z = self.online(h)  # (B, n, d), n = L - w + 1
        with torch.no_grad():
            z_target = self.target(h)
        n = z.shape[1]

        per_k = []
        for k in range(1, K + 1):
            pred = self.predictor(z[:, : n - k], k)
            per_k.append(normalized_mse(pred, z_target[:, k:]).mean())
        pred_loss = torch.stack(per_k).mean()

        flat = z.reshape(-1, z.shape[-1])
        loss = pred_loss
        if self.hparams.var_weight:
            loss = loss + self.hparams.var_weight * variance_loss(flat)
        if self.hparams.cov_weight:
            loss = loss + self.hparams.cov_weight * covariance_loss(flat)

        on_step = stage == "train"
        bs = x.shape[0]
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bs)
        # epoch-only: under DDP these are all-reduced once per epoch, not every step
        self.log(f"{stage}/pred_loss", pred_loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        for k, l in enumerate(per_k, 1):
            self.log(f"{stage}/cos_k{k}", 1 - l.detach() / 2, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        if stage == "val":
            self._collect("val", z[:, -1].detach().float())
        elif not self.trainer.enable_validation:
            self._collect("train", x[:, -w:].detach())
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    # ---- EMA target ----

    def ema_momentum(self, step: int | None = None) -> float:
        """Momentum after `step` optimizer steps (default: the current global step)."""
        step = self.trainer.global_step if step is None else step
        return cosine_momentum(step, self._total_steps, self.hparams.ema_start, self.hparams.ema_end)

    def on_train_start(self) -> None:
        self._total_steps = float(self.trainer.estimated_stepping_batches)
        self._ema_step = self.trainer.global_step
        if self.trainer.global_step == 0:
            # start from the online weights as the strategy has them (broadcast from rank 0 under DDP)
            self.target.load_state_dict(self.online.state_dict())

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """ξ <- m ξ + (1 - m) θ, in place."""
        for pt, po in zip(self.target.parameters(), self.online.parameters()):
            pt.lerp_(po.detach(), 1.0 - momentum)
        for bt, bo in zip(self.target.buffers(), self.online.buffers()):
            bt.copy_(bo)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # global_step counts optimizer steps: this skips gradient-accumulation micro-batches
        # and runs after optimizer.step(), i.e. on weights identical on every rank
        step = self.trainer.global_step
        if step > self._ema_step:
            self.update_target(self.ema_momentum(step))
            self._ema_step = step

    # ---- optimisation ----

    def configure_optimizers(self) -> Any:
        params = [p for m in (self.online, self.predictor) for p in m.parameters()]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        total = self.trainer.estimated_stepping_batches
        if self.hparams.lr_schedule == "constant" or not math.isfinite(total):
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(total), 1), eta_min=self.hparams.lr / 100)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
