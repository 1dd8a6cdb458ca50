"""Does steering toward a macrostate work, and what does it cost? An α sweep (docs/architecture.md §3.6).

For one target group g and a list of coefficients α, each point of the sweep:

1. generates continuations of the same prompts with ``steer(model, v_g, alpha=α)``
   (greedy by default, so α = 0 is the plain model's own text);
2. re-reads prompt + continuation with the **unsteered** model in one
   teacher-forced forward pass, and from it takes
   - **share**: the fraction of generated tokens whose RET group (encoder on
     the unsteered hidden states, same window and centroids as the store's
     groups) is g, pooled over all prompts;
   - **perplexity**: ``exp(mean NLL)`` of the generated tokens under the
     unsteered model given the prompt and the earlier generated tokens, pooled
     over all prompts (fluency: 1 = perfectly predictable to the plain model).

Why the unsteered re-read and not the steered run's own hidden states: when the
vector is added at (or below) a layer the encoder reads, the steered run's
states are pushed toward g *by construction* (``v_g`` is "mean of g minus the
overall mean" at that very layer), so their groups would report success even if
the text did not change at all. Re-reading the text with the plain model
measures what steering changed in the *output*: text that puts the unsteered
model into macrostate g. At α = 0 the two readings coincide.

Generated tokens are counted up to, not including, the first end-of-sequence
token (as the trajectory store does); the first generated token is part of
every count.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Sequence

import numpy as np
import torch

from activation_cache.arch import resolve_model
from activation_cache.batching import left_pad, pad_rows, until_stop
from activation_cache.devices import input_device
from activation_cache.errors import InputError
from activation_cache.ranks import Rank, all_gather, batch_shard
from activation_cache.tracer import eos_ids
from ret_toolkit.steering.detect import LayerCapture, MacrostateReader
from ret_toolkit.steering.hooks import steer
from ret_toolkit.steering.plan import Vectors
from ret_toolkit.steering.settings import GenerationSettings
from ret_toolkit.steering.sweep_result import SweepResult, score_point

__all__ = ["generate_continuations", "render_prompts", "reread", "sweep"]


def render_prompts(tokenizer, prompts: Sequence[Any], chat: bool = True) -> list[list[int]]:
    """Token ids of each prompt (strings or :class:`activation_cache.prompts.Prompt`), no padding.

    ``chat=True`` wraps plain text as one user turn through the chat template,
    as ``ret-extract --chat`` (and the demo store) does.
    """
    from activation_cache.prompts import Prompt, render_prompt

    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            p = Prompt(prompt_id=f"prompt-{i}", text=p, messages=None, meta={}, source=f"prompt {i}")
        if not isinstance(p, Prompt):
            raise InputError(f"prompt {i} must be a string or a Prompt, got {type(p).__name__}")
        is_chat = chat or p.messages is not None
        ids = tokenizer(render_prompt(p, tokenizer, chat=chat), add_special_tokens=not is_chat)["input_ids"]
        if not ids:
            raise InputError(f"prompt {i} is empty after tokenisation")
        out.append(list(ids))
    if not out:
        raise InputError("no prompts given")
    return out


@torch.inference_mode()
def generate_continuations(model, tokenizer, prompt_ids: Sequence[Sequence[int]], vectors: Vectors | None = None,
                           alpha: float = 0.0, *, settings: GenerationSettings | None = None,
                           model_name: str | None = None, **overrides: Any) -> list[list[int]]:
    """Generated ids of each prompt (cut before the first EOS), with ``steer(vectors, alpha, settings.positions)``.

    ``vectors=None`` or ``alpha == 0`` generates without any hook. Sampling
    (``sample=True``) reseeds torch with ``seed`` first, so every α of a
    sweep draws from the same random stream. ``settings`` and ``overrides`` as
    :func:`~ret_toolkit.steering.generate.generate`'s (``chat`` plays no part: the prompts are ids).
    """
    g = GenerationSettings.of(settings, overrides)
    max_new_tokens, batch_size, do_sample, seed = g.max_new_tokens, g.batch_size, g.sample, g.seed
    module, _, _ = resolve_model(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = set(eos_ids(module, tokenizer))
    device = input_device(module)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": pad}
    if not do_sample:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(seed)
    hooked = vectors is not None and alpha != 0.0
    out: list[list[int]] = []
    with steer(model, vectors, alpha=alpha, positions=g.positions, model_name=model_name) if hooked else nullcontext():
        for lo in range(0, len(prompt_ids), batch_size):
            batch = left_pad(prompt_ids[lo : lo + batch_size], pad)
            seqs = module.generate(**{k: v.to(device) for k, v in batch.items()}, **kwargs)
            width = batch["input_ids"].shape[1]
            out.extend(until_stop(row[width:].tolist(), stop) for row in seqs.cpu())
    return out


@torch.inference_mode()
def reread(model, reader: MacrostateReader, prompt_ids: Sequence[Sequence[int]], generated: Sequence[Sequence[int]],
           *, batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Teacher-forced forward of prompt + continuation with the model as it is (no steering active).

    Returns, per prompt, ``(nll, groups)`` over its generated tokens: float64
    (n,) negative log-likelihood in nats of each generated token given
    everything before it, and int64 (n,) its RET group.
    """
    module, _, _ = resolve_model(model)
    if len(prompt_ids) != len(generated):
        raise InputError(f"{len(prompt_ids)} prompts but {len(generated)} continuations")
    device = input_device(module)
    results: list[tuple[np.ndarray, np.ndarray]] = []
    with LayerCapture(model, reader.layers) as capture:
        for lo in range(0, len(prompt_ids), batch_size):
            rows = [list(p) + list(g) for p, g in zip(prompt_ids[lo : lo + batch_size], generated[lo : lo + batch_size])]
            # Right padding: real tokens keep positions 0..T-1 (absolute position embeddings
            # see what generate saw) and never attend to padding (it comes after them).
            ids, mask = pad_rows(rows, 0, left=False)
            logits = module(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            hidden = capture.hidden().cpu()
            for i, r in enumerate(rows):
                n_prompt, n = len(prompt_ids[lo + i]), len(r)
                if n == n_prompt:  # nothing generated (EOS first)
                    results.append((np.zeros(0), np.zeros(0, np.int64)))
                    continue
                targets = ids[i, n_prompt:n]
                nll = -logp[i, n_prompt - 1 : n - 1].gather(1, targets[:, None])[:, 0]  # position t predicts t+1
                groups = reader.groups(hidden[i, :n])[n_prompt:]
                results.append((nll.double().numpy(), groups.numpy().astype(np.int64)))
    return results


def sweep(model, tokenizer, reader: MacrostateReader, vector: Vectors, target_group: int, alphas: Sequence[float],
          prompt_ids: Sequence[Sequence[int]], *, settings: GenerationSettings | None = None,
          model_name: str | None = None, progress=None, rank: Rank | None = None, **overrides: Any) -> SweepResult:
    """Share of the target group and perplexity for every α (module docstring).

    Args:
        model, tokenizer: the (unsteered) ``transformers`` model; steering is
            only active while each α generates.
        reader: RET encoder + centroids (:func:`~ret_toolkit.steering.detect.load_reader`).
        vector: the steering vector(s) for ``target_group``.
        alphas: coefficients; 0 is added if missing (the baseline).
        prompt_ids: :func:`render_prompts` output.
        settings, overrides: how each α generates (:class:`~ret_toolkit.steering.settings.GenerationSettings`;
            keywords such as ``max_new_tokens=24`` override single fields).
        progress: ``True`` for a progress bar over the α values, or a callable
            ``progress(point)`` called with each :class:`SweepPoint`.
        rank: under torchrun, this process's rank
            (:func:`activation_cache.distributed.detect_rank`): each rank generates and
            re-reads its whole batches of prompts, and every rank returns the result of
            all of them (equal to one process's when decoding is greedy; sampling draws
            each rank's own stream from ``seed``).

    Returns:
        :class:`~ret_toolkit.steering.sweep_result.SweepResult`: one point per α
        (ascending), the α = 0 baseline, the best α and its gain with a CI. The
        fluency budget of the best α is the result's ``max_ppl_ratio`` (default
        1.5; set it, or pass one to :meth:`SweepResult.best`), not the sweep's.
    """
    g = GenerationSettings.of(settings, overrides)
    (target_group,) = reader.check_groups([target_group], "target group")
    reader.check_model(model, model_name=model_name)
    values = sorted({float(a) for a in alphas} | {0.0})
    if not all(math.isfinite(a) for a in values):
        raise InputError(f"alphas must be finite, got {list(alphas)}")
    mine = list(prompt_ids)[batch_shard(len(prompt_ids), g.batch_size, rank)]
    bar = None
    if progress is True:  # one bar on the lead rank; a callable is the caller's own report
        from tqdm.auto import tqdm

        bar = tqdm(total=len(values), unit="α", desc=f"sweep toward group {target_group}", dynamic_ncols=True,
                   disable=rank is not None and rank.rank != 0)
    if not callable(progress):  # True (drawn above), False or None: no callback
        progress = None
    local = []  # per α: (per-prompt scores of this rank's prompts, its first continuation, the continuations' ids)
    for alpha in values:
        gen = generate_continuations(model, tokenizer, mine, vector, alpha, settings=g, model_name=model_name)
        local.append((reread(model, reader, mine, gen, batch_size=g.batch_size),
                      tokenizer.decode(gen[0]) if gen else None, [list(map(int, g)) for g in gen]))
        if progress is not None and rank is None:
            progress(score_point(alpha, target_group, local[-1][0], reader.k, local[-1][1] or "", local[-1][2]))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(alpha=f"{alpha:g}")
    if bar is not None:
        bar.close()
    shards = all_gather(local, rank)
    points = []
    for i, alpha in enumerate(values):
        scored = [x for shard in shards for x in shard[i][0]]
        example = next((shard[i][1] for shard in shards if shard[i][1] is not None), "")
        generated = [g for shard in shards for g in shard[i][2]]
        points.append(score_point(alpha, target_group, scored, reader.k, example, generated))
        if progress is not None and rank is not None:
            progress(points[-1])
    vectors = list(vector) if isinstance(vector, (list, tuple)) else [vector]
    record = {"positions": g.positions, "max_new_tokens": g.max_new_tokens, "do_sample": g.sample, "seed": g.seed,
              "n_prompts": len(prompt_ids), "k": reader.k, "reader_layers": reader.layers,
              "vector_layers": sorted({x for v in vectors for x in v.layers})}
    return SweepResult(target_group, points, record, vector=vectors[0].manifest if len(vectors) == 1 else None)
