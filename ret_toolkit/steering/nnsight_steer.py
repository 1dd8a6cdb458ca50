"""Steer generation through nnsight interventions (same vectors, α and positions as :func:`steer`).

nnsight 0.8 notes (docs/architecture.md §6): per-step code goes in ``for step in
tracer.iter[...]`` inside ``with tracer.invoke(...)``; step 0 of ``generate``
is the whole prompt, later steps are one token each (KV cache), so
``positions`` maps to ``iter[0]`` (prompt), ``iter[1:]`` (generated) or
``iter[:]`` (all). Block ``.output`` is a tensor with current transformers, a
tuple on older ones. The generated ids leave the trace through
``tracer.result.save()`` in a second, empty invoke.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import nnsight
import torch

from activation_cache.arch import resolve_model
from activation_cache.errors import InputError
from ret_toolkit.steering.plan import Vectors, plan_steering

__all__ = ["language_model", "nnsight_generate"]


def generate_settings(generate_kwargs: dict[str, Any], tokenizer=None) -> dict[str, Any]:
    """``generate`` keywords: greedy unless ``do_sample``, sampling values checked
    (:func:`~activation_cache.tracer.check_sampling`), padding with the tokenizer's pad id."""
    from activation_cache.tracer import check_sampling

    kwargs = {"do_sample": False, **generate_kwargs}
    if kwargs["do_sample"]:
        check_sampling(**{k: kwargs.get(k) for k in ("temperature", "top_p", "top_k")})
    else:
        for key in ("temperature", "top_p", "top_k"):
            kwargs.setdefault(key, None)
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    return kwargs


def language_model(model, tokenizer=None):
    """An nnsight ``LanguageModel`` for ``model`` (returned as is if it already is one)."""
    if isinstance(model, nnsight.LanguageModel):
        return model
    module, _, tok = resolve_model(model)
    tokenizer = tokenizer if tokenizer is not None else tok
    if tokenizer is None:
        raise InputError("nnsight_generate needs a tokenizer: pass tokenizer= (or a LoadedModel / LanguageModel)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LanguageModel is a deprecated alias in 0.8 but still the one with generate
        return nnsight.LanguageModel(module, tokenizer=tokenizer)


def encode_inputs(inputs, tokenizer) -> dict[str, torch.Tensor]:
    """Prompt(s) as ``{"input_ids", "attention_mask"}`` (strings are left-padded by the tokenizer)."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs):
        enc = tokenizer(list(inputs), return_tensors="pt", padding=True)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if hasattr(inputs, "keys") and "input_ids" in inputs:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask}
    raise InputError("inputs must be a string, a list of strings, an id tensor or a dict with input_ids; "
                     f"got {type(inputs).__name__}")


def nnsight_generate(
    model,
    inputs,
    vectors: Vectors,
    alpha: float | Sequence[float] = 1.0,
    positions: str = "all",
    *,
    tokenizer=None,
    model_name: str | None = None,
    block_path: str | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """Generate with steering applied by nnsight interventions.

    Args:
        model: an nnsight ``LanguageModel``, a ``LoadedModel``, or a
            ``transformers`` model (then pass ``tokenizer=``).
        inputs: a prompt string, a list of them (left-padded), an id tensor
            (B, T), or a dict / ``BatchEncoding`` with ``input_ids`` (and
            ``attention_mask``).
        vectors, alpha, positions, model_name, block_path: as for
            :func:`ret_toolkit.steering.steer`.
        **generate_kwargs: passed to ``generate`` (``max_new_tokens``,
            ``do_sample``...). Greedy by default.

    Returns:
        int64 (B, T + new) token ids, prompt included (like ``model.generate``).

    Raises:
        InputError: as :func:`steer`, or inputs / tokenizer missing.
    """
    lm = language_model(model, tokenizer)
    plan = plan_steering(model if not isinstance(model, nnsight.LanguageModel) else lm, vectors, alpha,
                         positions, model_name=model_name, block_path=block_path)
    encoded = encode_inputs(inputs, lm.tokenizer)
    kwargs = generate_settings(generate_kwargs, lm.tokenizer)

    envoy = lm
    for part in plan.arch.block_path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    # Ascending layer order: interventions must follow module execution order within a step.
    targets = [(envoy[layer], delta) for layer, delta in plan.cast_deltas().items()]
    steps = {"all": slice(None), "prompt": 0, "generated": slice(1, None)}[plan.positions]

    with warnings.catch_warnings():
        # An open-ended `tracer.iter[...]` ends with a "never reached" warning by design.
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with torch.inference_mode(), lm.generate(**kwargs) as tracer:
            with tracer.invoke(encoded):
                for _step in tracer.iter[steps]:
                    for block, delta in targets:
                        out = block.output
                        if isinstance(out, tuple):
                            block.output = (out[0] + delta,) + tuple(out[1:])
                        else:
                            block.output = out + delta
            with tracer.invoke():
                sequences = tracer.result.save()
    return sequences
