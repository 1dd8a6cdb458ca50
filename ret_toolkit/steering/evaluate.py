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
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from activation_cache.arch import resolve_model
from activation_cache.batching import pad_rows
from activation_cache.devices import input_device
from activation_cache.errors import InputError
from activation_cache.ranks import Rank, all_gather, batch_shard
from activation_cache.tracer import eos_ids
from ret_toolkit.steering.detect import LayerCapture, MacrostateReader
from ret_toolkit.steering.hooks import steer
from ret_toolkit.steering.plan import Vectors

__all__ = ["SweepPoint", "best_point", "generate_continuations", "left_pad", "render_prompts", "reread",
           "score_point", "share_gain_ci", "sweep", "target_share_gain", "until_stop"]


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


def until_stop(ids: Sequence[int], stop: set[int]) -> list[int]:
    """``ids`` up to, not including, the first id in ``stop`` (as the trajectory store keeps them)."""
    out = []
    for t in ids:
        if t in stop:
            break
        out.append(int(t))
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Token-id lists as a left-padded batch ``{"input_ids", "attention_mask"}``, int64 (B, T_max), for ``generate``."""
    ids, mask = pad_rows(rows, pad_id, left=True)
    return {"input_ids": ids, "attention_mask": mask}


@torch.inference_mode()
def generate_continuations(model, tokenizer, prompt_ids: Sequence[Sequence[int]], vectors: Vectors | None = None,
                           alpha: float = 0.0, *, positions: str = "all", max_new_tokens: int = 32,
                           batch_size: int = 8, do_sample: bool = False, seed: int = 0,
                           model_name: str | None = None) -> list[list[int]]:
    """Generated ids of each prompt (cut before the first EOS), with ``steer(vectors, alpha, positions)``.

    ``vectors=None`` or ``alpha == 0`` generates without any hook. Sampling
    (``do_sample=True``) reseeds torch with ``seed`` first, so every α of a
    sweep draws from the same random stream.
    """
    module, _, _ = resolve_model(model)
    if max_new_tokens < 1 or batch_size < 1:
        raise InputError(f"need max_new_tokens >= 1 and batch_size >= 1, got {max_new_tokens}, {batch_size}")
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
    with steer(model, vectors, alpha=alpha, positions=positions, model_name=model_name) if hooked else nullcontext():
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


@dataclass
class SweepPoint:
    """One α of a sweep.

    Attributes:
        alpha: steering coefficient (0 = unsteered).
        share: fraction of generated tokens in the target group (0..1).
        perplexity: exp(mean NLL) of the generated tokens under the unsteered model.
        n_tokens: generated tokens counted (all prompts).
        n_prompts: prompts.
        group_shares: share of every group 0..K-1 (sums to 1), to see where the mass went.
        prompt_counts: per prompt ``[tokens in the target group, generated tokens]``
            (for bootstrap intervals over prompts, :func:`share_gain_ci`).
        example: the first prompt's continuation, decoded.
    """

    alpha: float
    share: float
    perplexity: float
    n_tokens: int
    n_prompts: int
    group_shares: list[float] = field(default_factory=list)
    prompt_counts: list[list[int]] = field(default_factory=list)
    example: str = ""


def score_point(alpha: float, target_group: int, scored: Sequence[tuple[np.ndarray, np.ndarray]], k: int,
                example: str = "") -> SweepPoint:
    """Pool per-prompt ``(nll, groups)`` from :func:`reread` into a :class:`SweepPoint`."""
    nll = np.concatenate([s[0] for s in scored]) if scored else np.zeros(0)
    groups = np.concatenate([s[1] for s in scored]) if scored else np.zeros(0, np.int64)
    n = int(len(groups))
    per_prompt = [[int((s[1] == target_group).sum()), int(len(s[1]))] for s in scored]
    if n == 0:
        return SweepPoint(float(alpha), float("nan"), float("nan"), 0, len(scored), [0.0] * k, per_prompt, example)
    counts = np.bincount(groups, minlength=k)[:k]
    return SweepPoint(float(alpha), float((groups == target_group).mean()), float(math.exp(nll.mean())), n,
                      len(scored), (counts / n).tolist(), per_prompt, example)


def sweep(model, tokenizer, reader: MacrostateReader, vector: Vectors, target_group: int, alphas: Sequence[float],
          prompt_ids: Sequence[Sequence[int]], *, positions: str = "all", max_new_tokens: int = 32,
          batch_size: int = 8, do_sample: bool = False, seed: int = 0, model_name: str | None = None,
          progress=None, rank: Rank | None = None) -> dict[str, Any]:
    """Share of the target group and perplexity for every α (module docstring).

    Args:
        model, tokenizer: the (unsteered) ``transformers`` model; steering is
            only active while each α generates.
        reader: RET encoder + centroids (:func:`~ret_toolkit.steering.detect.load_reader`).
        vector: the steering vector(s) for ``target_group``.
        alphas: coefficients; 0 is added if missing (the baseline).
        prompt_ids: :func:`render_prompts` output.
        progress: optional callable ``progress(point)`` after each α.
        rank: under torchrun, this process's rank
            (:func:`activation_cache.distributed.detect_rank`): each rank generates and
            re-reads its whole batches of prompts, and every rank returns the result of
            all of them (equal to one process's when decoding is greedy; sampling draws
            each rank's own stream from ``seed``).

    Returns:
        JSON-ready dict: ``target_group``, ``points`` (one :class:`SweepPoint`
        dict per α, ascending), ``baseline`` (the α = 0 point) and the settings.
    """
    (target_group,) = reader.check_groups([target_group], "target group")
    reader.check_model(model, model_name=model_name)
    values = sorted({float(a) for a in alphas} | {0.0})
    if not all(math.isfinite(a) for a in values):
        raise InputError(f"alphas must be finite, got {list(alphas)}")
    mine = list(prompt_ids)[batch_shard(len(prompt_ids), batch_size, rank)]
    local = []  # per α: (per-prompt scores of this rank's prompts, its first continuation)
    for alpha in values:
        gen = generate_continuations(model, tokenizer, mine, vector, alpha, positions=positions,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                                     seed=seed, model_name=model_name)
        local.append((reread(model, reader, mine, gen, batch_size=batch_size),
                      tokenizer.decode(gen[0]) if gen else None))
        if progress is not None and rank is None:
            progress(score_point(alpha, target_group, local[-1][0], reader.k, local[-1][1] or ""))
    shards = all_gather(local, rank)
    points = []
    for i, alpha in enumerate(values):
        scored = [x for shard in shards for x in shard[i][0]]
        example = next((shard[i][1] for shard in shards if shard[i][1] is not None), "")
        points.append(score_point(alpha, target_group, scored, reader.k, example))
        if progress is not None and rank is not None:
            progress(points[-1])
    return {
        "target_group": target_group,
        "points": [asdict(p) for p in points],
        "baseline": asdict(next(p for p in points if p.alpha == 0.0)),
        "settings": {"positions": positions, "max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed,
                     "n_prompts": len(prompt_ids), "k": reader.k, "reader_layers": reader.layers,
                     "vector_layers": sorted({x for v in ([vector] if not isinstance(vector, (list, tuple)) else vector)
                                              for x in v.layers})},
    }


def best_point(result: dict[str, Any], max_ppl_ratio: float = 1.5) -> dict[str, Any]:
    """The point with the highest share among α >= 0 whose perplexity is within ``max_ppl_ratio`` × α = 0's.

    α = 0 itself always qualifies, so the answer exists.
    """
    base = result["baseline"]
    ok = [p for p in result["points"] if p["alpha"] >= 0 and p["n_tokens"] > 0
          and p["perplexity"] <= max_ppl_ratio * base["perplexity"]]
    return max(ok or [base], key=lambda p: (p["share"], -p["alpha"]))


def target_share_gain(result: dict[str, Any], max_ppl_ratio: float = 1.5) -> float:
    """Share at :func:`best_point` minus share at α = 0 (0 when no α helps)."""
    return float(best_point(result, max_ppl_ratio)["share"] - result["baseline"]["share"])


def share_gain_ci(result: dict[str, Any], alpha: float, n_boot: int = 2000, level: float = 0.95,
                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of share(α) - share(0), resampling prompts (paired: same prompts).

    Each resample draws prompts with replacement and pools their tokens, as
    :func:`score_point` does. Note: when ``alpha`` is itself chosen as the best
    of several points on the same prompts, the interval does not cover that
    selection step.
    """
    points = {p["alpha"]: p for p in result["points"]}
    a = np.asarray(points[float(alpha)]["prompt_counts"], float)
    b = np.asarray(points[0.0]["prompt_counts"], float)
    if len(a) == 0 or len(a) != len(b):
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = a[idx, 0].sum(1) / a[idx, 1].sum(1) - b[idx, 0].sum(1) / b[idx, 1].sum(1)
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
