"""The blocking loss, the KL-to-base baseline and the drift they are judged by; pure tensor functions.

With a_θ,k and a_base,k the projections of the fine-tuned and the base model's block
outputs on blocked direction k (:class:`~ret_toolkit.blocking.directions.BlockedDirections`),
on the same tokens, the penalty of BLOCK-EM (Ustaomeroglu & Qu, 2026) is

    mean over completion tokens of  Σ_k ReLU(s_k (a_θ,k − a_base,k))²

with s_k = +1 for directions whose rises are blocked and −1 for falls: a move the
other way costs nothing. Prompt tokens never count (``mask``).
"""

from __future__ import annotations

import torch

__all__ = ["blocking_penalty", "kl_to_base", "projection_drift"]


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, ...) ``values`` over the tokens where ``mask`` (B, T) is true; 0 when none is."""
    m = mask.to(values.dtype)
    while m.ndim < values.ndim:
        m = m.unsqueeze(-1)
    return (values * m).sum(dim=(0, 1)) / m.sum(dim=(0, 1)).clamp_min(1.0)


def blocking_penalty(tuned: torch.Tensor, base: torch.Tensor, signs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The one-sided blocking penalty (module docstring): a scalar, in squared projection units.

    Args:
        tuned, base: (B, T, K) projections of the fine-tuned and the base model.
        signs: (K,) ±1.
        mask: (B, T) bool, true on completion tokens.
    """
    excess = torch.relu(signs.to(tuned.dtype) * (tuned - base.detach()))
    return _token_mean((excess ** 2).sum(-1), mask)


def projection_drift(tuned: torch.Tensor, base: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(K,) mean of a_θ,k − a_base,k over completion tokens (signed, projection units): how far
    fine-tuning has moved each blocked feature, whichever way."""
    return _token_mean((tuned - base).detach(), mask)


def kl_to_base(logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of KL(p_θ ‖ p_base) of the next-token distributions (nats).

    ``logits``, ``base_logits``: (B, T, V); ``mask``: (B, T) bool, the positions whose next
    token is a completion token (where the fine-tuning loss is taken).
    """
    # only the masked rows: a (B, T, V) float32 softmax of a 256k vocabulary would not fit
    logp = torch.log_softmax(logits[mask].float(), dim=-1)
    if len(logp) == 0:
        return logits.sum() * 0.0
    logq = torch.log_softmax(base_logits.detach()[mask].float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()
