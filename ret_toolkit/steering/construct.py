"""Build steering vectors: contrastive mean difference of two text sets, or RET group means.

Both constructions give, per layer ℓ (output of decoder block ℓ, the store's
``/hidden/<ℓ>``), a raw difference of means ``r`` and by default rescale it to
the typical token hidden-state norm ``m`` at that layer: ``v = r / ||r|| * m``.
So ``alpha = 1`` adds a vector as long as a typical hidden state there.

"Typical" is the **median** token norm by default (``scale="median"``), not the
mean: many LMs put a few massive activations on the first token (attention
sink). Measured on SmolLM2-135M, block 12: first token norm ≈ 24 000, other
tokens ≈ 140, so the mean over three short texts is ≈ 2 760 while the median is
≈ 136; scaling to the mean gives a vector 20× too long (α = 0.5 already turns the
output into repeated garbage). ``scale="mean"`` and ``scale=None`` (raw
difference) are available. For the same reason :func:`from_contrast` leaves out
the first token of each text by default (``skip_first=1``): with it, the
SmolLM2 contrast is dominated by sink-state noise (raw norm 125 vs 21 without).

The manifest's ``norms[ℓ]`` records ``raw`` (``||r||``), ``mean_token_norm``,
``median_token_norm`` and ``norm`` (``||v||``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from activation_cache.arch import find_architecture, get_module, resolve_model
from activation_cache.devices import input_device
from activation_cache.errors import InputError
from activation_cache.layers import LayerSpec, block_indices, parse_layers
from ret_toolkit.steering.settings import SCALES, ContrastSettings
from ret_toolkit.steering.vector import SteeringVector, model_identity

__all__ = ["SCALES", "from_contrast", "from_groups", "scale_to_norm"]



def scale_to_norm(raw: np.ndarray, target: float) -> np.ndarray:
    """``raw`` rescaled to L2 norm ``target``; InputError if ``raw`` is zero."""
    norm = float(np.linalg.norm(raw))
    if not np.isfinite(norm) or norm == 0.0:
        raise InputError("the two means are identical (difference has norm 0); nothing to steer with")
    return raw * (target / norm)


def _check_scale(scale) -> None:
    if scale not in SCALES:
        raise InputError(f"scale must be 'median', 'mean' or None; got {scale!r}")


def _finish(raw: np.ndarray, token_norms: np.ndarray, scale: str | None) -> tuple[torch.Tensor, dict]:
    """The stored direction and its norm record, from the raw difference and all token norms."""
    token_norms = token_norms.astype(np.float64)
    mean_norm, median_norm = float(token_norms.mean()), float(np.median(token_norms))
    target = {"median": median_norm, "mean": mean_norm}.get(scale)
    direction = raw if target is None else scale_to_norm(raw, target)
    record = {"raw": float(np.linalg.norm(raw)), "mean_token_norm": mean_norm, "median_token_norm": median_norm}
    return torch.from_numpy(np.asarray(direction, np.float64)), record


class _Sums:
    """Running float64 sum of hidden states and the list of token norms over kept tokens."""

    def __init__(self, d: int):
        self.total = np.zeros(d, np.float64)
        self.norms: list[np.ndarray] = []
        self.n = 0

    def add(self, h: torch.Tensor) -> None:  # h: (n_tokens, d)
        h = h.to(torch.float64)
        self.total += h.sum(0).numpy()
        self.norms.append(h.norm(dim=-1).numpy())
        self.n += h.shape[0]

    def mean(self) -> np.ndarray:
        return self.total / self.n


@torch.inference_mode()
def _text_sums(module, blocks, layers, tokenizer, texts, batch_size, max_length, skip_first, where):
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
        raise InputError(f"{where} must be a non-empty list of strings")
    sums = {layer: None for layer in layers}
    captured: dict[int, torch.Tensor] = {}

    def capture(layer):
        def hook(mod, args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
        return hook

    can_pad = tokenizer.pad_token_id is not None
    if not can_pad:
        batch_size = 1  # nothing to pad with (e.g. GPT-2's tokenizer): one text per forward
    handles = [blocks[layer].register_forward_hook(capture(layer)) for layer in layers]
    try:
        device = input_device(module)
        for lo in range(0, len(texts), batch_size):
            # Right padding: real tokens keep positions 0..T-1 whatever the batch (absolute
            # position embeddings do not shift), so the vector does not depend on batch_size.
            enc = tokenizer(list(texts[lo : lo + batch_size]), return_tensors="pt", padding=can_pad,
                            padding_side="right", truncation=max_length is not None, max_length=max_length,
                            return_special_tokens_mask=True)
            keep = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
            keep[:, :skip_first] = False
            captured.clear()
            module(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                   use_cache=False)
            for layer in layers:
                h = captured[layer].float().cpu()[keep]
                if sums[layer] is None:
                    sums[layer] = _Sums(h.shape[-1])
                sums[layer].add(h)
    finally:
        for handle in handles:
            handle.remove()
    if sums[layers[0]].n == 0:
        raise InputError(f"{where}: no tokens left to average (all special, or within skip_first={skip_first})")
    return sums


def from_contrast(
    model,
    tokenizer,
    texts_a: Sequence[str],
    texts_b: Sequence[str],
    layers: LayerSpec,
    *,
    settings: ContrastSettings | None = None,
    model_name: str | None = None,
    block_path: str | None = None,
    meta: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> SteeringVector:
    """Contrastive steering vector: mean hidden state of texts A minus that of texts B.

    Means are over the tokens of each set (each token weighs the same): not
    padding, not special tokens (BOS...), not the first ``skip_first``
    positions of each text (attention sinks; module docstring). Hidden states
    are the outputs of decoder block ℓ for each ℓ in ``layers`` (0-based;
    negative counts from the end). The difference is rescaled to the median
    (or mean) token norm over both sets at that layer.

    Args:
        model: a ``transformers`` causal LM or ``LoadedModel`` (in eval mode).
        tokenizer: its tokenizer (``None`` for a ``LoadedModel``: its own).
        texts_a, texts_b: the two sets of texts; steering with ``alpha > 0``
            pushes toward A.
        layers: one block index or several.
        settings, overrides: how the texts are averaged
            (:class:`~ret_toolkit.steering.settings.ContrastSettings`: ``scale``
            ``"median"`` (default), ``"mean"`` or ``None``; ``skip_first``
            positions left out (default 1); ``batch_size`` texts per forward
            pass; ``max_length``); keywords such as ``scale="mean"`` override
            single fields.
        model_name: name recorded in the manifest (default: the model's name).
        block_path: where the decoder blocks are, if discovery fails.
        meta: free-form JSON-serialisable fields for the manifest.

    Raises:
        InputError: empty text sets, bad layers, bad settings, identical means.
    """
    c = ContrastSettings.of(settings, overrides)
    module, _, tok = resolve_model(model)
    tokenizer = tokenizer if tokenizer is not None else tok
    if tokenizer is None:
        raise InputError("from_contrast needs the model's tokenizer")
    ident = model_identity(model, model_name, block_path)
    arch = find_architecture(module, block_path=block_path)
    blocks = get_module(module, arch.block_path)
    layers = sorted(block_indices(parse_layers(layers, arch.n_layers)))
    args = (module, blocks, layers, tokenizer)
    sa = _text_sums(*args, texts_a, c.batch_size, c.max_length, c.skip_first, "texts_a")
    sb = _text_sums(*args, texts_b, c.batch_size, c.max_length, c.skip_first, "texts_b")
    directions, norms = {}, {}
    for layer in layers:
        a, b = sa[layer], sb[layer]
        directions[layer], norms[str(layer)] = _finish(a.mean() - b.mean(), np.concatenate(a.norms + b.norms),
                                                       c.scale)
        norms[str(layer)].update(n_tokens_a=a.n, n_tokens_b=b.n)
    construction = {"method": "contrast", "scale": c.scale, "skip_first": c.skip_first, "n_texts_a": len(texts_a),
                    "n_texts_b": len(texts_b), "max_length": c.max_length}
    return SteeringVector(directions, model=ident["model"], model_type=ident["model_type"],
                          n_layers=ident["n_layers"], construction=construction, norms=norms, meta=meta)


def from_groups(
    hidden,
    groups,
    group: int,
    layer: int | None = None,
    *,
    mask=None,
    scale: str | None = "median",
    model=None,
    model_name: str | None = None,
    chunk_rows: int = 65536,
    meta: Mapping[str, Any] | None = None,
) -> SteeringVector:
    """Macrostate steering vector: mean hidden state of tokens in ``group`` minus the overall mean.

    Storage-independent: ``hidden`` is any (N, d) array-like that supports row
    slicing (numpy array, torch tensor, h5py dataset such as a store's
    ``/hidden/<layer>``), read in chunks of ``chunk_rows`` and accumulated in
    float64; or a mapping ``layer -> (N, d)`` array-like for several layers
    (same rows). ``groups`` are the (N,) integer group ids of the same rows
    (e.g. a macrostate file's ``/group``: nearest RET centroid).

    Args:
        hidden: (N, d) array-like for ``layer``, or ``{layer: (N, d)}`` (keys
            may be store layer names such as ``"12"``).
        groups: (N,) integer group labels.
        group: the target group id.
        layer: decoder-block index of ``hidden`` when it is a single array.
        mask: optional (N,) bool, rows to use (both means and the norm scale).
            Tip: leave out each sequence's first token (rows ``offsets[:-1]`` of
            a store), an attention sink in many LMs (module docstring).
        scale: ``"median"`` (default) / ``"mean"`` token norm over the used
            rows, or ``None`` for the raw difference.
        model: optional model (or ``LoadedModel``) to record its identity;
            else ``model_name`` alone (or nothing) is recorded.

    Raises:
        InputError: shape mismatches, a group with no tokens, a bad layer key.
    """
    _check_scale(scale)
    if isinstance(hidden, Mapping):
        if layer is not None:
            raise InputError("give layer= only with a single hidden array, not a mapping layer -> array")
        per_layer = dict(hidden)
    else:
        if layer is None:
            raise InputError("from_groups: pass layer= (the decoder block the hidden states come from)")
        per_layer = {layer: hidden}
    if not per_layer:
        raise InputError("from_groups: no hidden states given")
    labels = np.asarray(groups)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"groups must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    use = np.ones(len(labels), bool) if mask is None else np.asarray(mask)
    if use.shape != labels.shape or use.dtype != bool:
        raise InputError(f"mask must be a bool array of shape {labels.shape}, got {use.dtype} {use.shape}")
    in_group = (labels == group) & use
    n_group, n_used = int(in_group.sum()), int(use.sum())
    if n_group == 0:
        present = np.unique(labels[use])
        raise InputError(f"group {group} has no tokens (groups present: {present[:20].tolist()})")
    if n_group == n_used:
        raise InputError(f"every token is in group {group}; its mean equals the overall mean")

    ident = model_identity(model, model_name) if model is not None else {"model": model_name or ""}
    directions, norms = {}, {}
    for key, h in per_layer.items():
        if isinstance(key, str) and key.lstrip("-").isdigit():
            key = int(key)  # store layer names are decimal strings
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise InputError(f"from_groups: layer {key!r} is not a decoder-block index (0-based int)")
        key = int(key)
        shape = tuple(getattr(h, "shape", ()))
        if len(shape) != 2 or shape[0] != len(labels):
            raise InputError(f"hidden states for layer {key} have shape {shape}, expected ({len(labels)}, d)")
        total, total_g, token_norms = np.zeros(shape[1]), np.zeros(shape[1]), []
        for lo in range(0, shape[0], chunk_rows):
            x = h[lo : lo + chunk_rows]
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            x = x.astype(np.float64)[use[lo : lo + chunk_rows]]
            finite = np.isfinite(x).all(1)
            if not finite.all():
                row = lo + int(np.flatnonzero(use[lo : lo + chunk_rows])[np.argmin(finite)])
                raise InputError(f"hidden states for layer {key} have non-finite values at row {row}")
            total += x.sum(0)
            total_g += x[in_group[lo : lo + chunk_rows][use[lo : lo + chunk_rows]]].sum(0)
            token_norms.append(np.linalg.norm(x, axis=1).astype(np.float32))
        raw = total_g / n_group - total / n_used
        directions[key], norms[str(key)] = _finish(raw, np.concatenate(token_norms), scale)
    construction = {"method": "groups", "group": int(group), "scale": scale,
                    "n_group_tokens": n_group, "n_tokens": n_used}
    return SteeringVector(directions, model=ident.get("model", ""), model_type=ident.get("model_type", ""),
                          n_layers=ident.get("n_layers"), construction=construction, norms=norms, meta=meta)
