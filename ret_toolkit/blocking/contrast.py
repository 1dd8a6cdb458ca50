"""A direction to block, from two sets of conversations: what the model does in A's replies and not in B's.

The mean output of decoder block ℓ over the completion tokens of conversations A minus
that over the completion tokens of conversations B (each token weighs the same), for
each ℓ: e.g. A = replies that cave to pushback, B = replies that hold, on the same
prompts. Only completion tokens count, so the shared prompts cancel exactly rather
than diluting the difference.
"""

from __future__ import annotations

from typing import Sequence

import torch

from activation_cache.errors import InputError
from ret_toolkit.blocking.conversations import encode_conversation
from ret_toolkit.blocking.datamodule import collate_conversations
from ret_toolkit.blocking.directions import BlockedDirections

__all__ = ["completion_means", "from_conversations"]


@torch.inference_mode()
def completion_means(model, tokenizer, conversations: Sequence[Sequence[dict]], layers: Sequence[int],
                     batch_size: int = 8, train_on: str = "last") -> torch.Tensor:
    """(len(layers), d_model) float32: mean block outputs over every completion token of ``conversations``."""
    from activation_cache.arch import resolve_model
    from activation_cache.devices import input_device
    from ret_toolkit.steering.detect import LayerCapture

    module, _, _ = resolve_model(model)
    rows = [encode_conversation(tokenizer, c, train_on, f"conversation {i}") for i, c in enumerate(conversations)]
    if not rows:
        raise InputError("no conversations to average")
    total, count = None, 0
    device = input_device(module)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with LayerCapture(module, layers) as cap:
        for lo in range(0, len(rows), batch_size):
            batch = collate_conversations(rows[lo: lo + batch_size], pad)
            module(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   use_cache=False)
            h = cap.hidden()[batch["completion"].to(device)].double()  # (tokens, L * d)
            total = h.sum(0) if total is None else total + h.sum(0)
            count += len(h)
    return (total / count).float().cpu().reshape(len(layers), -1)


def from_conversations(model, tokenizer, a: Sequence[Sequence[dict]], b: Sequence[Sequence[dict]],
                       layers: int | Sequence[int], sign: int | str = "+", name: str = "contrast",
                       batch_size: int = 8) -> BlockedDirections:
    """One blocked direction per layer: mean completion-token output of ``a`` minus that of ``b`` (module docstring).

    ``sign="+"`` blocks moves toward A. The directions are unit vectors; the raw
    difference's norm per layer is kept in ``source["norms"]``.
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    diff = (completion_means(model, tokenizer, a, layers, batch_size)
            - completion_means(model, tokenizer, b, layers, batch_size))
    names = [name] if len(layers) == 1 else [f"{name}@{x}" for x in layers]
    return BlockedDirections(layers, diff, [sign] * len(layers), names,
                             {"method": "contrast_of_conversations", "n_a": len(a), "n_b": len(b),
                              "norms": diff.norm(dim=1).tolist()})
