"""Effective rank of a set of representations, the collapse message, and the watch that stops training on collapse.

Collapse (every token mapped to nearly the same direction) is the known
failure of BYOL/JEPA-style training; the effective rank (Roy & Vetterli 2007,
used as "RankMe" by Garrido et al. 2023) is a cheap label-free alarm.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor


class RepresentationCollapsed(RuntimeError):
    """Raised by callers (e.g. the CLI) that want a collapse to be fatal."""


def effective_rank(z: Tensor, eps: float = 1e-12) -> float:
    """exp(entropy of the L1-normalised singular values of z). (N, d) -> float in [1, min(N, d)].

    z is deliberately *not* centred: the training loss is a cosine, so a large
    common offset shared by all z is itself a collapse (all cosines near 1)
    and should lower the rank, not be subtracted away. Constant z gives 1.
    """
    z = torch.as_tensor(z).detach().to(torch.float64)
    if z.dim() != 2 or z.shape[0] == 0:
        raise ValueError(f"effective_rank needs a non-empty (N, d) matrix, got shape {tuple(z.shape)}")
    s = torch.linalg.svdvals(z)
    if s.sum() <= eps:  # all-zero z: nothing spans anything
        return 1.0
    p = s / s.sum()
    entropy = -(p * (p + eps).log()).sum()
    return max(1.0, float(entropy.exp()))  # rounding can dip just below 1


def collapse_message(rank: float, threshold: float, epoch: int) -> str | None:
    """One-line explanation when rank < threshold, else None."""
    if rank >= threshold:
        return None
    return (
        f"representation collapsed: effective rank {rank:.2f} < threshold {threshold:g} at epoch {epoch}; "
        "try a lower lr, a larger var_weight / cov_weight, or check that the input hidden states vary "
        "(standardisation, layer choice)"
    )


class CollapseWatch:
    """LightningModule mixin: the effective rank of z after every epoch, and a stop on collapse.

    The module keeps ``hparams.rank_samples``, ``hparams.collapse_threshold``,
    ``hparams.z_dim`` and an ``encode`` method; its training/validation step
    calls :meth:`_collect` with the rows to keep (validation: z, (B, d);
    training without validation: the last window, (B, w, D)).
    """

    effective_rank_history: list[tuple[int, float]]
    collapse_message: str | None

    def _init_watch(self) -> None:
        self._z_buf: dict[str, Tensor] = {}
        self._z_count: dict[str, int] = {}
        self.effective_rank_history = []
        self.collapse_message = None

    # Validation z come from fixed weights, so they are kept directly (one z per window).
    # Without a validation loop the weights move during the epoch and z collected along
    # the way would mix many encoders (inflating the rank), so the last window of each
    # training sample is kept instead and encoded once at epoch end.

    def _collect(self, stage: str, rows: Tensor) -> None:
        """Keep the first ceil(rank_samples / world_size) rows (z or windows) per rank and stage."""
        if stage not in self._z_buf:
            cap = math.ceil(self.hparams.rank_samples / max(self.trainer.world_size, 1))
            self._z_buf[stage] = rows.new_zeros(cap, *rows.shape[1:])
            self._z_count[stage] = 0
        buf, n = self._z_buf[stage], self._z_count[stage]
        take = min(buf.shape[0] - n, rows.shape[0])
        if take > 0:
            buf[n : n + take] = rows[:take]
            self._z_count[stage] = n + take

    def _reset(self, stage: str) -> None:
        self._z_buf.pop(stage, None)
        self._z_count.pop(stage, None)

    @torch.no_grad()
    def _local_z(self, stage: str) -> Tensor:
        """This rank's z for the rank estimate: (n, d), n may be 0."""
        buf, n = self._z_buf.get(stage), self._z_count.get(stage, 0)
        self._reset(stage)
        if buf is None or n == 0:
            return torch.zeros(0, self.hparams.z_dim, device=self.device)
        rows = buf[:n]
        if stage == "train":  # stored windows (n, w, D): encode with the current weights
            rows = torch.cat([self.encode(c)[:, -1] for c in rows.split(256)])
        return rows.float()

    def _check_rank(self, stage: str) -> None:
        """Collective (every rank calls it): gather z, log the effective rank, stop on collapse."""
        z = self._local_z(stage)
        cap = math.ceil(self.hparams.rank_samples / max(self.trainer.world_size, 1))
        padded = z.new_zeros(cap, z.shape[-1])  # all_gather needs equal shapes on every rank
        padded[: len(z)] = z[:cap]
        count = torch.tensor([min(len(z), cap)], device=z.device)
        bufs = self.all_gather(padded).reshape(-1, cap, z.shape[-1])  # (world, cap, d)
        counts = self.all_gather(count).reshape(-1)
        z = torch.cat([b[: int(c)] for b, c in zip(bufs, counts)])
        if len(z) == 0:  # decided from gathered counts, so the same on every rank
            return
        # every rank computes the same value from the same z; broadcasting rank 0's float
        # removes any doubt (e.g. a nondeterministic SVD on different GPUs)
        rank = float(self.trainer.strategy.broadcast(effective_rank(z), src=0))
        epoch = self.current_epoch
        self.effective_rank_history.append((epoch, rank))
        self.log("effective_rank", rank, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

        msg = collapse_message(rank, self.hparams.collapse_threshold, epoch)
        if msg is not None:
            self.collapse_message = msg
            self.trainer.should_stop = True
            rank_zero_warn(msg)

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            self._reset("val")  # untrained weights (sanity check) say nothing about collapse
            return
        self._check_rank("val")

    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def on_train_epoch_end(self) -> None:
        if not self.trainer.enable_validation:
            self._check_rank("train")
