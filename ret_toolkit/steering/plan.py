"""What to add where: vectors × α checked against a model and summed per layer.

Both mechanisms (:mod:`.hooks` for plain ``transformers`` models and
:mod:`.nnsight_steer` for nnsight ``generate``) start from the same
:class:`SteeringPlan`, so they add exactly the same deltas at the same places.

Positions (the same meaning in both mechanisms):

- ``"all"``: every token of every forward pass;
- ``"prompt"``: the prompt tokens only (with KV-cache ``generate``: the first
  forward pass; its keys/values stay in the cache, so later tokens still see
  the steered prompt);
- ``"generated"``: the generated tokens only, i.e. the tokens fed back after
  the prompt (the first generated token is sampled from unsteered prompt
  logits; it is steered when it is fed back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Iterable, Sequence, Union

import torch
from torch import nn

from activation_cache.arch import ArchInfo, get_module, resolve_model
from activation_cache.errors import InputError
from ret_toolkit.steering.vector import SteeringVector

__all__ = ["POSITIONS", "SteeringPlan", "plan_steering"]

POSITIONS = ("all", "prompt", "generated")

Vectors = Union[SteeringVector, Iterable[SteeringVector]]


@dataclass
class SteeringPlan:
    """Deltas ready to add.

    Attributes:
        module: the ``transformers`` model (an nnsight model is unwrapped).
        arch: its block path, ``n_layers``, ``d_model``.
        deltas: layer -> ``sum_i alpha_i * v_i[layer]``, float32 on the CPU,
            ascending layer order.
        positions: ``"all"``, ``"prompt"`` or ``"generated"``.
    """

    module: nn.Module
    arch: ArchInfo
    deltas: dict[int, torch.Tensor]
    positions: str

    def blocks(self) -> nn.Module:
        """The decoder-block list of ``module``."""
        return get_module(self.module, self.arch.block_path)

    def cast_deltas(self) -> dict[int, torch.Tensor]:
        """Deltas in the dtype and on the device of each target block's weights (done once)."""
        blocks = self.blocks()
        out = {}
        for layer, d in self.deltas.items():
            param = next(blocks[layer].parameters(), None)
            out[layer] = d if param is None else d.to(device=param.device, dtype=param.dtype)
        return out


def _vector_list(vectors: Vectors) -> list[SteeringVector]:
    if isinstance(vectors, SteeringVector):
        return [vectors]
    if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Iterable):
        raise InputError(f"vectors must be a SteeringVector or a list of them, got {type(vectors).__name__}")
    vectors = list(vectors)
    bad = [type(v).__name__ for v in vectors if not isinstance(v, SteeringVector)]
    if bad or not vectors:
        raise InputError(f"vectors must be a non-empty list of SteeringVector, got {bad or 'an empty list'}")
    return vectors


def _alphas(alpha: float | Sequence[float], n: int) -> list[float]:
    if isinstance(alpha, Real):
        values = [float(alpha)] * n
    else:
        try:
            values = [float(a) for a in alpha]
        except TypeError:
            raise InputError(f"alpha must be a number or one number per vector, got {type(alpha).__name__}") from None
        if len(values) != n:
            raise InputError(f"alpha has {len(values)} values for {n} vectors; give one number or one per vector")
    if not all(math.isfinite(a) for a in values):
        raise InputError(f"alpha must be finite, got {alpha}")
    return values


def plan_steering(
    model,
    vectors: Vectors,
    alpha: float | Sequence[float] = 1.0,
    positions: str = "all",
    *,
    model_name: str | None = None,
    block_path: str | None = None,
) -> SteeringPlan:
    """Check ``vectors`` against ``model`` and sum ``alpha_i * v_i`` per layer.

    Args:
        model: ``transformers`` model, ``LoadedModel`` or nnsight ``LanguageModel``.
        vectors: one :class:`SteeringVector` or several (summed).
        alpha: one coefficient for all vectors, or one per vector.
        positions: ``"all"``, ``"prompt"`` or ``"generated"`` (module docstring).
        model_name: the model's name for the identity check (default: its
            ``LoadedModel.name`` / ``name_or_path``).
        block_path: decoder-block path override (see ``find_architecture``).

    Raises:
        InputError: bad positions / alpha, or a vector that does not fit the model.
    """
    if positions not in POSITIONS:
        raise InputError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
    module, _, _ = resolve_model(model)
    vectors = _vector_list(vectors)
    alphas = _alphas(alpha, len(vectors))
    arch = None
    for v in vectors:
        arch = v.check_model(model, model_name=model_name, block_path=block_path)
    deltas: dict[int, torch.Tensor] = {}
    for v, a in zip(vectors, alphas):
        for layer, direction in v.directions.items():
            deltas[layer] = deltas[layer] + a * direction if layer in deltas else a * direction
    return SteeringPlan(module, arch, dict(sorted(deltas.items())), positions)
