"""The VQ codebook: nearest-code lookup, EMA update, dead-code restarts (DDP-safe).

Codes and encodings live on the unit sphere (cosine-similarity VQ): distances
are bounded, so the soft assignments behind the entropy term have a meaningful
temperature, and no code can win by norm alone.

Updates happen in :meth:`Codebook.update`, called once per training step after
the optimiser step:

- EMA: each used code moves toward the mean of the encodings assigned to it,
  ``c <- normalize(lerp(c, mean, 1 - decay))``. The counts and sums are
  all-reduced first, so every DDP rank applies the same update.
- Dead-code restarts: a code whose EMA usage (encodings per step) falls below
  ``dead_threshold`` is re-seeded from a random encoding of the current step,
  drawn from the encodings of all ranks with a generator seeded by the step
  number, so every rank picks the same one.

The codebook is also an ``nn.Parameter``, so a loss on it (the cosine penalty
that keeps codes apart) moves it between EMA updates.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: Tensor) -> Tensor:
    if _distributed():
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate (n, ...) tensors of all ranks along dim 0 (same n on every rank)."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class Codebook(nn.Module):
    """K unit vectors of size ``dim``.

    Args:
        num_codes: K.
        dim: code size.
        decay: EMA decay per step (0 = jump to the batch mean, 1 = frozen).
        dead_threshold: restart a code whose EMA usage falls below this many
            encodings per step (0 disables restarts).
        seed: seed of the restart draws (combined with the step number).
    """

    def __init__(self, num_codes: int = 32, dim: int = 32, decay: float = 0.9, dead_threshold: float = 0.5, seed: int = 0):
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"need num_codes >= 2 and dim >= 1, got {num_codes}, {dim}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(F.normalize(torch.randn(num_codes, dim, generator=g), dim=-1))
        self.register_buffer("usage_ema", torch.ones(num_codes))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        self.decay = decay
        self.dead_threshold = dead_threshold
        self.seed = seed

    @property
    def num_codes(self) -> int:
        return self.embed.shape[0]

    def codes_of(self, e: Tensor) -> Tensor:
        """Nearest code of each unit vector: (B, dim) -> int64 (B,)."""
        return (e @ F.normalize(self.embed, dim=-1).T).argmax(-1)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise encodings.

        Args:
            e: (B, dim) encodings (normalised here).
        Returns:
            q: (B, dim) the chosen codes, straight-through (gradient flows to e);
            codes: int64 (B,);
            sim: (B, K) cosine similarity to every code (for the entropy term).
        """
        e = F.normalize(e, dim=-1)
        sim = e @ F.normalize(self.embed, dim=-1).T
        codes = sim.argmax(-1)
        q = F.normalize(self.embed, dim=-1)[codes]
        return e + (q - e).detach(), codes, sim

    @torch.no_grad()
    def update(self, e: Tensor, codes: Tensor, step: int) -> int:
        """EMA update and dead-code restarts from this step's encodings; returns codes restarted.

        Args:
            e: (B, dim) encodings of this rank (normalised here).
            codes: int64 (B,) their codes.
            step: global step (seeds the restart draw identically on all ranks).
        """
        e = F.normalize(e.detach().float(), dim=-1)
        K = self.num_codes
        counts = all_reduce_sum(torch.bincount(codes, minlength=K).float())
        sums = all_reduce_sum(torch.zeros(K, e.shape[1]).index_add_(0, codes, e))
        used = counts > 0
        if self.decay < 1.0 and used.any():
            mean = sums[used] / counts[used, None]
            self.embed.data[used] = F.normalize(torch.lerp(self.embed.data[used], mean, 1.0 - self.decay), dim=-1)
        self.usage_ema.lerp_(counts, 1.0 - self.decay)
        dead = self.usage_ema < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        pool = all_gather_cat(e)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        pick = torch.randperm(len(pool), generator=g)[:n_dead]
        if len(pick) < n_dead:  # tiny batch: reuse encodings with fresh jitter
            pick = pick[torch.randint(len(pick), (n_dead,), generator=g)]
        jitter = 0.01 * torch.randn(n_dead, e.shape[1], generator=g)
        self.embed.data[dead] = F.normalize(pool[pick] + jitter, dim=-1)
        self.usage_ema[dead] = counts.sum() / K  # a fair share, so it is not restarted again at once
        self.restarts += n_dead
        return n_dead

    def cosine_penalty(self) -> Tensor:
        """Mean squared cosine similarity between distinct codes (0 = mutually orthogonal)."""
        c = F.normalize(self.embed, dim=-1)
        sim = c @ c.T
        K = len(c)
        return (sim.pow(2).sum() - K) / (K * (K - 1))


def usage_entropy_loss(sim: Tensor, temperature: float = 0.1) -> Tensor:
    """Mean per-sample entropy minus the entropy of the batch-average soft assignment (nats).

    Minimising it makes each encoding commit to one code while the batch spreads
    over all codes. ``sim``: (B, K) cosine similarities.
    """
    p = F.softmax(sim / temperature, dim=-1)
    per_sample = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
    avg = p.mean(0)
    batch = -(avg * torch.log(avg.clamp_min(1e-12))).sum()
    return per_sample - batch
