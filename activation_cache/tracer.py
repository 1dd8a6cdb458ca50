"""Record residual-stream hidden states with nnsight, in forward or generate mode.

The tracer only runs the model and returns padded tensors plus a validity mask;
turning them into stored rows is :mod:`activation_cache.pipeline`'s job.

nnsight 0.8 notes (docs/architecture.md §6): values leave a trace only through ``.save()``;
in ``generate`` per-step code goes in ``for step in tracer.iter[:]`` and the
generated ids are read as ``tracer.result`` in a second, empty invoke; block
``.output`` is a tensor with current transformers but a tuple on older ones.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import nnsight
import torch

from activation_cache.devices import input_device
from activation_cache.errors import InputError, option
from activation_cache.models import LoadedModel
from activation_cache.schema import EMBED, layer_name


@dataclass(frozen=True)
class Sampling:
    """Decoding settings for generate mode: greedy unless ``do_sample``."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling(temperature=self.temperature, top_p=self.top_p)


def check_sampling(temperature: float | None = None, top_p: float | None = None, top_k: int | None = None) -> None:
    """InputError (one line) unless each given sampling value is one ``generate`` can use.

    temperature: finite and > 0; top_p: in (0, 1]; top_k: an integer >= 0 (0 = off).
    ``None`` is "not set" and always accepted.
    """
    import math

    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise InputError(f"{option('temperature')} must be a finite number > 0, got {temperature}")
    if top_p is not None and not (0 < top_p <= 1):  # NaN fails both comparisons
        raise InputError(f"{option('top_p')} must be in (0, 1], got {top_p}")
    if top_k is not None and (isinstance(top_k, float) or top_k < 0):
        raise InputError(f"{option('top_k')} must be an integer >= 0, got {top_k}")


@dataclass
class Traced:
    """One traced batch, still padded.

    input_ids: int64 (B, T_total), prompt plus generated ids
    valid:     bool (B, T_total), True where a real (stored) token is
    generated: bool (B, T_total), True where the token was generated
    hidden:    layer name -> float (B, T_total, D), on the device of that layer's block

    Everything stays on the model's devices; :func:`activation_cache.pipeline.to_host`
    copies only the stored rows to the CPU.
    """

    input_ids: torch.Tensor
    valid: torch.Tensor
    generated: torch.Tensor
    hidden: dict[str, torch.Tensor]


def _unwrap(output):
    return output[0] if isinstance(output, tuple) else output


def _read(name: str, envoy):
    """The traced value of one target: block 0's input for "embed", else the block output."""
    return envoy.input if name == EMBED else _unwrap(envoy.output)


class Tracer:
    """Reads the outputs of chosen decoder blocks (and the embedding) via nnsight.

    ``layers`` are block indices (0-based) and/or ``"embed"``. ``"embed"`` is
    the residual stream entering block 0 (HF's ``hidden_states[0]``): the
    token-embedding output plus, for models like GPT-2, the learned position
    embedding, which the token-embedding module alone does not include.
    """

    def __init__(self, loaded: LoadedModel, layers: Sequence[int | str]):
        self.loaded = loaded
        self.layers = [layer_name(x) for x in layers]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LanguageModel is a deprecated alias in 0.8 but still the one with generate
            self.lm = nnsight.LanguageModel(loaded.model, tokenizer=loaded.tokenizer)
        blocks = self.lm.get(loaded.arch.block_path)
        self._targets = [(name, blocks[0] if name == EMBED else blocks[int(name)]) for name in self.layers]
        self.eos_ids = eos_ids(loaded.model, loaded.tokenizer)

    def _to_model(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        device = input_device(self.loaded.model)
        return tuple(t.to(device, non_blocking=True) for t in tensors)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Traced:
        """Trace the prompts only. Expects right padding, so real tokens keep positions 0..T-1."""
        targets = self._targets
        input_ids, attention_mask = self._to_model(input_ids, attention_mask)
        with self.lm.trace(dict(input_ids=input_ids, attention_mask=attention_mask)):
            saved = nnsight.save([])
            for name, envoy in targets:
                saved.append(_read(name, envoy))
        hidden = {name: h for (name, _), h in zip(targets, saved)}
        valid = attention_mask.bool()
        return Traced(input_ids, valid, torch.zeros_like(valid), hidden)

    @torch.inference_mode()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, sampling: Sampling
    ) -> Traced:
        """Generate up to ``max_new_tokens`` tokens and record every stored token's hidden states.

        Expects left padding. A generated token's hidden state is computed when
        it is fed back, so we run one step more than we store. Tokens from the
        first end-of-sequence token on are not stored (whether the EOS itself
        would be fed back depends on the rest of the batch, which would make
        the store depend on batch composition).
        """
        targets = self._targets
        input_ids, attention_mask = self._to_model(input_ids, attention_mask)
        kwargs = dict(max_new_tokens=max_new_tokens + 1, do_sample=sampling.do_sample,
                      pad_token_id=self.loaded.tokenizer.pad_token_id)
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
            torch.manual_seed(sampling.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with warnings.catch_warnings():
            # An open `tracer.iter[:]` ends with a "never reached" warning by design.
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with self.lm.generate(**kwargs) as tracer:
                with tracer.invoke(dict(input_ids=input_ids, attention_mask=attention_mask)):
                    steps = nnsight.save([])
                    for _step in tracer.iter[:]:
                        row = []
                        for name, envoy in targets:
                            row.append(_read(name, envoy))
                        steps.append(row)
                with tracer.invoke():
                    sequences = tracer.result.save()
        B, T = input_ids.shape
        new = sequences[:, T:]
        n_fed = len(steps) - 1  # generated tokens whose hidden state was computed
        new = new[:, :n_fed]
        hidden = {name: torch.cat([s[i] for s in steps[: n_fed + 1]], dim=1) for i, (name, _) in enumerate(targets)}
        gen_valid = _before_eos(new, self.eos_ids)
        valid = torch.cat([attention_mask.bool(), gen_valid], dim=1)
        generated = torch.cat([torch.zeros_like(attention_mask, dtype=torch.bool), gen_valid], dim=1)
        return Traced(torch.cat([input_ids, new], dim=1), valid, generated, hidden)


def eos_ids(model, tokenizer) -> list[int]:
    """Sorted end-of-sequence ids of the model's generation config and the tokenizer."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def _before_eos(new: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """bool (B, N): True for generated tokens strictly before each row's first EOS."""
    if not eos_ids or new.shape[1] == 0:
        return torch.ones_like(new, dtype=torch.bool)
    is_eos = torch.isin(new, torch.tensor(eos_ids, device=new.device))
    return is_eos.int().cumsum(dim=1) == 0
