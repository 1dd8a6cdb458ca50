"""Batched generation with steering, open- or closed-loop: what ``ret-steer`` prints, as an API.

    import ret_toolkit as ret
    model = ret.load_model()
    vec = ret.group_vector("demo_out", group=3, model=model)
    for g in ret.generate(model, ["What is 7 times 8?"], vec, alpha=0.3, max_new_tokens=24):
        print(g.text)

Open loop adds ``alpha * vector`` at every step (:func:`~ret_toolkit.steering.hooks.steer`).
Closed loop (``reader`` and ``detect``) steers only while the macrostate the RET
encoder reads from the model's own states is in (``when="in"``) or out of the
``detect`` groups (:func:`~ret_toolkit.steering.closed_loop.closed_loop_generate`).
Decoding is greedy unless ``do_sample``; continuations are cut before the first
end-of-sequence token, as the trajectory store keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from activation_cache.errors import InputError
from ret_toolkit.steering.detect import MacrostateReader
from ret_toolkit.steering.plan import Vectors
from ret_toolkit.steering.settings import GenerationSettings

__all__ = ["Generation", "generate", "prompt_words"]


@dataclass
class Generation:
    """One prompt's continuation.

    Attributes:
        prompt: the prompt's own words (its text, or its last chat turn).
        ids: generated token ids, cut before the first end-of-sequence token.
        text: ``ids`` decoded, special tokens skipped.
        steered: closed loop only: how many of the forward passes that read this
            prompt's generated tokens were steered.
        fed: closed loop only: how many such forward passes there were.
    """

    prompt: str
    ids: list[int]
    text: str
    steered: int | None = None
    fed: int | None = None


def prompt_words(prompt) -> str:
    """A prompt's own words for a printout: a string, a Prompt's text, or its last chat turn."""
    if isinstance(prompt, str):
        return prompt
    if prompt.text is not None:
        return prompt.text
    return str(prompt.messages[-1].get("content", "")) if prompt.messages else ""


def generate(model, prompts: Sequence[Any], vector: Vectors | None = None, alpha: float = 0.0, *,
             settings: GenerationSettings | None = None, reader: MacrostateReader | None = None,
             detect: Sequence[int] = (), when: str = "in", **overrides: Any) -> list[Generation]:
    """Continue every prompt, steered by ``alpha * vector`` (open loop) or only while a macrostate holds (closed loop).

    Args:
        model: a :class:`~activation_cache.models.LoadedModel` (its tokenizer renders the prompts).
        prompts: strings or :class:`activation_cache.prompts.Prompt` records.
        vector: steering vector(s); None or ``alpha == 0`` generates the plain model's text.
        settings: :class:`~ret_toolkit.steering.settings.GenerationSettings` (tokens, batch size,
            sampling, chat rendering, open-loop positions); keywords such as ``max_new_tokens=24``
            override single fields, as ``transformers``' ``generate(**kwargs)`` overrides its config.
        reader, detect, when: closed loop: the RET reader, the groups it watches and
            whether to steer while the macrostate is ``"in"`` or ``"out"`` of them.

    Returns:
        One :class:`Generation` per prompt, in order.
    """
    from ret_toolkit.steering.closed_loop import closed_loop_generate
    from activation_cache.batching import left_pad, until_stop
    from ret_toolkit.steering.evaluate import generate_continuations, render_prompts

    g = GenerationSettings.of(settings, overrides)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise InputError("generate needs a LoadedModel (activation_cache.models.load_model), whose tokenizer "
                         "renders the prompts")
    prompt_ids = render_prompts(tok, prompts, chat=g.chat)
    words = [prompt_words(p) for p in prompts]
    if not detect:
        gen = generate_continuations(model, tok, prompt_ids, vector, alpha, settings=g)
        return [Generation(w, ids, tok.decode(ids, skip_special_tokens=True)) for w, ids in zip(words, gen)]
    if reader is None or vector is None:
        raise InputError("closed-loop generation (detect) needs a reader and a vector")
    from activation_cache.tracer import eos_ids

    stop = set(eos_ids(model.model, tok))
    out: list[Generation] = []
    for lo in range(0, len(prompt_ids), g.batch_size):
        batch = left_pad(prompt_ids[lo : lo + g.batch_size], tok.pad_token_id)
        seqs, loop = closed_loop_generate(model, batch, vector, reader, detect, alpha, when, tokenizer=tok,
                                          max_new_tokens=g.max_new_tokens, do_sample=g.sample)
        width = batch["input_ids"].shape[1]
        for i, (row, s) in enumerate(zip(seqs, loop.steered)):
            ids = until_stop(row[width:].tolist(), stop)
            fed = s[1 : len(ids) + 1]  # the forward passes that read this row's generated tokens
            out.append(Generation(words[lo + i], ids, tok.decode(ids, skip_special_tokens=True), int(fed.sum()),
                                  len(fed)))
    return out
