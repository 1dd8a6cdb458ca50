"""Effective rank of a set of representations, and the collapse message.

Collapse (every token mapped to nearly the same direction) is the known
failure of BYOL/JEPA-style training; the effective rank (Roy & Vetterli 2007,
used as "RankMe" by Garrido et al. 2023) is a cheap label-free alarm.
"""

from __future__ import annotations

import torch
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
