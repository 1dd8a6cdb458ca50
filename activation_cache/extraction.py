"""Extraction: prompts -> batches -> nnsight tracer -> HDF5 store, resumably.

The Python API behind ``ret-extract``::

    from activation_cache.extraction import ExtractConfig, extract
    result = extract(ExtractConfig(prompts="reasoning", out="traj.h5", generate=32))
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import operator
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from activation_cache import schema
from activation_cache.dtype_choice import choose_storage_dtype
from activation_cache.batching import Window, pad_rows, padding_share, plan_windows
from activation_cache.errors import InputError, option
from activation_cache.extract_config import ExtractConfig
from activation_cache.layers import parse_layers
from activation_cache.models import LoadedModel, use_chat_template
from activation_cache.pipeline import (
    BackgroundWriter,
    HostBatch,
    NonFinite,
    stored_rows,
    to_host,
)
from activation_cache.prompts import (
    Prompt,
    prompts_from_records,
    read_prompts,
    render_prompt,
)
from activation_cache.tracer import Sampling, Traced, Tracer
from activation_cache.writer import Batch, StoreSpec, StoreWriter

log = logging.getLogger(__name__)


@dataclass
class ExtractResult:
    path: Path
    n_sequences: int
    n_tokens: int
    new_sequences: int
    new_tokens: int
    seconds: float
    resumed: bool

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Prepared:
    """Prompts of this shard, tokenised and ready to batch."""

    prompts: list[Prompt]
    ids: list[list[int]]
    layers: list[str]
    meta_fields: list[str]
    truncated: list[str] = field(default_factory=list)
    batching: dict = field(default_factory=dict)  # plan_windows keywords: batch_size, batch_tokens, ...
    probe_ids: list[int] = field(default_factory=list)  # the whole source's first prompt: what dtype auto reads

    def windows(self, start: int = 0) -> list[Window]:
        """The batch plan from prompt ``start`` on: windows of whole batches (indices into ``ids``)."""
        return plan_windows([len(r) for r in self.ids], start, **self.batching)


def shard_slice(n: int, num_shards: int, shard_index: int) -> slice:
    """Contiguous share of ``n`` prompts for one shard, so merging keeps order."""
    return slice(shard_index * n // num_shards, (shard_index + 1) * n // num_shards)


def prepare(cfg: ExtractConfig, loaded: LoadedModel) -> Prepared:
    """Read, shard, render and tokenise the prompts; resolve the layers."""
    prompts = (read_prompts(cfg.prompts) if isinstance(cfg.prompts, (str, Path)) else
               prompts_from_records(cfg.prompts))[: cfg.limit]
    # Fields from *all* prompts, so every shard has the same /meta layout.
    meta_fields = _meta_fields(prompts, cfg.generate > 0)
    first = prompts[0] if prompts else None
    prompts = prompts[shard_slice(len(prompts), cfg.num_shards, cfg.shard_index)]
    if not prompts:
        raise InputError(f"shard {cfg.shard_index} of {cfg.num_shards} gets no prompts from "
                         f"{cfg.prompts if isinstance(cfg.prompts, (str, Path)) else 'the in-memory prompts'}")
    layers = parse_layers(cfg.layers, loaded.arch.n_layers, embed=cfg.embed)
    max_tokens, why = prompt_budget(cfg, loaded)
    ids, truncated = [], []
    for p in prompts:
        row = _tokenise(p, loaded.tokenizer, cfg)
        if len(row) > max_tokens:
            truncated.append(p.prompt_id)
        ids.append(row[:max_tokens])
    if truncated:
        shown = ", ".join(truncated[:10]) + (f" and {len(truncated) - 10} more" if len(truncated) > 10 else "")
        log.warning("truncated %d prompt(s) to %d tokens (%s): %s", len(truncated), max_tokens, why, shown)
    batching = dict(batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens, generate=cfg.generate,
                    window_tokens=window_tokens(cfg, len(layers), loaded.arch.d_model))
    probe = ids[0] if first is prompts[0] else _tokenise(first, loaded.tokenizer, cfg)[: cfg.max_tokens]
    return Prepared(prompts, ids, layers, meta_fields, truncated, batching, probe)


def prompt_budget(cfg: ExtractConfig, loaded: LoadedModel) -> tuple[int, str]:
    """``(tokens, why)``: the longest prompt a sequence may keep, ``max_tokens`` or less so that
    prompt plus ``generate`` fits the model's context (``max_position_embeddings``)."""
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if not isinstance(context, int) or cfg.max_tokens + cfg.generate <= context:
        return cfg.max_tokens, f"{option('max_tokens')} {cfg.max_tokens}"
    if cfg.generate >= context:
        raise InputError(f"{option('generate')} {cfg.generate} leaves no room for a prompt in the context of "
                         f"{loaded.name} ({context} tokens)")
    return context - cfg.generate, f"the model's context of {context} tokens less {option('generate')} {cfg.generate}"


def _tokenise(p: Prompt, tok, cfg: ExtractConfig) -> list[int]:
    """Token ids of one prompt as the store holds them (rendered, not yet truncated)."""
    chat = p.messages is not None or cfg.chat
    # A rendered chat template already contains its special tokens.
    row = tok(render_prompt(p, tok, chat=cfg.chat), add_special_tokens=not chat)["input_ids"]
    if not row:
        raise InputError(f"{p.source}: prompt {p.prompt_id!r} tokenises to nothing")
    return list(row)


def storage_dtype(cfg: ExtractConfig, loaded: LoadedModel, prep: Prepared) -> tuple[str, str]:
    """``(dtype, why)`` the store of ``cfg`` holds its hidden states in (resolves ``auto``, probing if needed)."""
    if cfg.dtype != "auto" or loaded.dtype in ("bfloat16", "float16"):
        return choose_storage_dtype(cfg.dtype, loaded.dtype)
    ids = torch.tensor([prep.probe_ids])
    traced = Tracer(loaded, prep.layers).forward(ids, torch.ones_like(ids))
    peak = max(float(h.detach().abs().max()) for h in traced.hidden.values())
    return choose_storage_dtype("auto", loaded.dtype, peak)


def resolved(cfg: ExtractConfig, loaded: LoadedModel, prep: Prepared) -> tuple[ExtractConfig, str]:
    """``cfg`` with its storage dtype resolved (what the store records), and why that dtype."""
    dtype, why = storage_dtype(cfg, loaded, prep)
    return replace(cfg, dtype=dtype), why


def store_config(cfg: ExtractConfig, loaded: LoadedModel, prep: Prepared) -> dict:
    """The config saved in the store; a rerun resumes only if it is identical."""
    digest = hashlib.sha256(json.dumps([[p.prompt_id, ids] for p, ids in zip(prep.prompts, prep.ids)]).encode())
    conf = asdict(cfg)
    for k in ("out", "overwrite", "device", "device_map", "pipeline"):
        conf.pop(k)
    if cfg.chat_template is None:  # stores written before the option existed resume as before
        conf.pop("chat_template")
    if not isinstance(cfg.prompts, (str, Path)):
        conf["prompts"] = "<in memory>"  # their content is in prompts_sha256
    conf.update(model=loaded.name, model_revision=loaded.revision, layers=prep.layers, model_dtype=loaded.dtype,
                n_prompts=len(prep.prompts), prompts_sha256=digest.hexdigest())
    return conf


def _model(cfg: ExtractConfig, loaded: LoadedModel | None, progress: bool = True) -> LoadedModel:
    """``loaded`` with the settings' chat template, or the model the settings name."""
    return use_chat_template(loaded, cfg.chat_template) if loaded is not None else cfg.load_model(progress)


def _meta_fields(prompts: Sequence[Prompt], generate: bool) -> list[str]:
    fields = dict.fromkeys(["prompt_id"])
    for p in prompts:
        fields.update(dict.fromkeys(p.meta))
    if generate:
        fields["finish_reason"] = None
    return list(fields)


#: Bytes of traced rows a ``batch_tokens`` window may hold before its commit.
WINDOW_BYTES = 256 << 20


def window_tokens(cfg: ExtractConfig, n_layers: int, d_model: int) -> int | None:
    """Prompt tokens per window in ``batch_tokens`` mode: 8 batches, or fewer when rows are large."""
    if cfg.batch_tokens is None:
        return None
    row_bytes = n_layers * d_model * 4  # as traced, float32 at most
    return max(cfg.batch_tokens, min(8 * cfg.batch_tokens, WINDOW_BYTES // max(row_bytes, 1)))


def extract(cfg: ExtractConfig, loaded: LoadedModel | None = None, progress: bool = True) -> ExtractResult:
    """Run (or resume) an extraction into ``cfg.out``; returns counts and timing.

    Resumes from the store's ``n_committed`` when the file exists with the
    same config; refuses a different config unless ``cfg.overwrite``. The
    model traces the next batch while a background thread writes the last
    one (:mod:`activation_cache.pipeline`).
    """
    cfg.validate()
    loaded = _model(cfg, loaded, progress)
    prep = prepare(cfg, loaded)
    cfg, why = resolved(cfg, loaded, prep)
    spec = StoreSpec(
        model=loaded.name, model_revision=loaded.revision, d_model=loaded.arch.d_model,
        n_model_layers=loaded.arch.n_layers, layers=prep.layers, config=store_config(cfg, loaded, prep),
        meta_fields=prep.meta_fields, dtype=cfg.dtype, compression=cfg.compression,
        tokenizer_json=_tokenizer_json(loaded), model_dtype=loaded.dtype, device=loaded.device, dtype_choice=why,
    )
    tracer = Tracer(loaded, prep.layers)
    n = len(prep.prompts)
    t0 = time.perf_counter()
    with StoreWriter(cfg.out, spec, overwrite=cfg.overwrite) as writer:
        start_seq, start_tok = writer.n_committed, writer.n_tokens
        bar = tqdm(total=n, initial=start_seq, unit="seq", desc=f"extract {Path(cfg.out).name}",
                   disable=not progress, dynamic_ncols=True)

        def commit(item: tuple[Window, list[HostBatch]]) -> None:
            window, parts = item
            writer.append(_window_batch(cfg, prep, window, parts))  # StoreWriteError on disk full etc.
            bar.update(window.stop - window.start)
            bar.set_postfix(tok_s=f"{(writer.n_tokens - start_tok) / max(time.perf_counter() - t0, 1e-9):.0f}")

        threaded = cfg.pipeline if cfg.pipeline is not None else not loaded.device.startswith("cpu")
        background = BackgroundWriter(commit, depth=1, threaded=threaded)
        try:
            for window in prep.windows(start_seq):
                parts = [to_host(_trace(cfg, tracer, prep, rows), rows, cfg.dtype) for rows in window.batches]
                background.submit((window, parts))
        finally:
            try:
                background.close()  # writes what was traced; raises the writer thread's failure
            finally:
                bar.close()
        result = ExtractResult(Path(cfg.out), writer.n_committed, writer.n_tokens, writer.n_committed - start_seq,
                               writer.n_tokens - start_tok, time.perf_counter() - t0, writer.resumed)
    return result


def _trace(cfg: ExtractConfig, tracer: Tracer, prep: Prepared, rows: Sequence[int]) -> Traced:
    """Trace the prompts ``rows`` (indices into ``prep``) as one padded batch."""
    ids = [prep.ids[i] for i in rows]
    pad_id = tracer.loaded.tokenizer.pad_token_id
    if cfg.generate > 0:
        input_ids, mask = pad_rows(ids, pad_id, left=True)
        sampling = Sampling(cfg.sample, cfg.temperature, cfg.top_p, seed=cfg.seed + min(rows))
        return tracer.generate(input_ids, mask, cfg.generate, sampling)
    input_ids, mask = pad_rows(ids, pad_id, left=False)
    return tracer.forward(input_ids, mask)


def _window_batch(cfg: ExtractConfig, prep: Prepared, window: Window, parts: list[HostBatch]) -> Batch:
    """The window's traced batches as one store batch, sequences in prompt order (runs on the writer thread)."""
    stored = []
    for part in parts:
        try:
            stored.append(stored_rows(part, cfg.dtype))
        except NonFinite as bad:
            raise _non_finite_error(bad, [prep.prompts[i] for i in part.index], cfg.dtype) from None
    part_stats = [part.row_stats() for part in parts]
    on_device = all(set(st) == set(prep.layers) for st, _ in part_stats)  # else the writer computes them
    stats = {k: functools.reduce(operator.add, [st[k] for st, _ in part_stats]) for k in prep.layers} \
        if on_device else None
    if len(parts) == 1 and window.in_prompt_order:
        tokens, generated, hidden, norms = parts[0].tokens, parts[0].generated, stored[0], part_stats[0][1]
    else:  # length-sorted batches: put the sequences back in prompt order
        seqs = {}
        for part, rows, (_, part_norms) in zip(parts, stored, part_stats):
            ends = np.cumsum([0, *part.lengths])
            for r, i in enumerate(part.index):
                seqs[i] = (part.tokens[r], part.generated[r], {k: v[ends[r]:ends[r + 1]] for k, v in rows.items()},
                           {k: v[ends[r]:ends[r + 1]] for k, v in part_norms.items()})
        order = range(window.start, window.stop)
        tokens, generated = [seqs[i][0] for i in order], [seqs[i][1] for i in order]
        hidden = {k: np.concatenate([seqs[i][2][k] for i in order]) for k in prep.layers}
        norms = {k: np.concatenate([seqs[i][3][k] for i in order]) for k in prep.layers} if on_device else None
    meta = [{"prompt_id": p.prompt_id, **p.meta} for p in prep.prompts[window.start:window.stop]]
    if cfg.generate > 0:
        for m, g in zip(meta, generated):
            m["finish_reason"] = "length" if g.sum() >= cfg.generate else "eos"
    return Batch(tokens, generated, hidden, meta, stats, norms)


def _non_finite_error(bad: NonFinite, prompts: Sequence[Prompt], dtype: str) -> InputError:
    ids = ", ".join(p.prompt_id for p in prompts)
    if bad.in_model:
        return InputError(f"the model produced non-finite hidden states (inf/NaN) at layer {bad.layer} in batch [{ids}]")
    return InputError(f"hidden states at layer {bad.layer} in batch [{ids}] exceed the {dtype} range (±65504); "
                      f"store them with {option('dtype', 'bfloat16')} (or float32)")


def _tokenizer_json(loaded: LoadedModel) -> str | None:
    backend = getattr(loaded.tokenizer, "backend_tokenizer", None)
    return backend.to_str() if backend is not None else None


@dataclass
class StoragePlan:
    """What ``--dry-run`` prints: the size of the store and the memory of the write path, before writing.

    ``chunk_bytes``: one HDF5 chunk of one layer (the chunk cache holds one per
    layer). ``window_bytes``: the largest window as traced (padded slots x
    layers x d_model x the model's bytes per value); at most three windows are
    in memory at once (one being traced, one queued, one being written).
    ``padding_share``: share of traced token slots that are padding.
    ``dtype`` / ``dtype_choice``: the storage dtype and why (what ``auto`` chose).
    """

    n_prompts: int
    n_layers: int
    d_model: int
    bytes_per_token: int
    prompt_tokens: int
    max_generated_tokens: int
    chunk_bytes: int = 0
    window_bytes: int = 0
    padding_share: float = 0.0
    dtype: str = "float16"
    dtype_choice: str = "as asked"

    @property
    def estimated_tokens(self) -> int:
        return self.prompt_tokens + self.max_generated_tokens

    @property
    def estimated_bytes(self) -> int:
        return self.estimated_tokens * self.bytes_per_token

    @property
    def write_path_bytes(self) -> int:
        """Upper bound of the write path's fixed memory: chunk caches plus three windows."""
        return self.n_layers * self.chunk_bytes + 3 * self.window_bytes

    def describe(self) -> str:
        gib = self.estimated_bytes / 2**30
        mib = 1 / 2**20
        return (
            f"prompts: {self.n_prompts}\n"
            f"layers: {self.n_layers} x d_model {self.d_model}\n"
            f"storage dtype: {self.dtype} ({self.dtype_choice})\n"
            f"bytes per token: {self.bytes_per_token}\n"
            f"tokens: {self.prompt_tokens} prompt + up to {self.max_generated_tokens} generated\n"
            f"estimated size: {self.estimated_bytes} bytes ({gib:.3f} GiB, before compression)\n"
            f"padding: {self.padding_share:.1%} of traced token slots\n"
            f"write-path memory: at most {self.write_path_bytes * mib:.1f} MiB ({self.n_layers} layers x "
            f"{self.chunk_bytes * mib:.2f} MiB chunk cache + 3 windows x {self.window_bytes * mib:.1f} MiB)"
        )


def plan(cfg: ExtractConfig, loaded: LoadedModel | None = None) -> StoragePlan:
    """Storage plan of an extraction without running the model."""
    cfg.validate()
    loaded = _model(cfg, loaded)
    prep = prepare(cfg, loaded)
    cfg, why = resolved(cfg, loaded, prep)
    d, n_layers = loaded.arch.d_model, len(prep.layers)
    itemsize = np.dtype(schema.HIDDEN_DTYPES[cfg.dtype]).itemsize
    per_token = 4 + 1 + n_layers * d * itemsize  # token id + mask + hidden rows
    lengths = [len(r) for r in prep.ids]
    windows = list(plan_windows(lengths, 0, batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens,
                                generate=cfg.generate, window_tokens=window_tokens(cfg, n_layers, d)))
    batches = [b for w in windows for b in w.batches]
    model_bytes = torch.finfo(getattr(torch, loaded.dtype)).bits // 8
    slots = max(sum((max(lengths[i] for i in b) + cfg.generate) * len(b) for b in w.batches) for w in windows)
    return StoragePlan(len(prep.prompts), n_layers, d, per_token, sum(lengths), cfg.generate * len(prep.prompts),
                       chunk_bytes=schema.chunk_rows(d * itemsize) * d * itemsize,
                       window_bytes=slots * n_layers * d * model_bytes,
                       padding_share=padding_share(batches, lengths, cfg.generate), dtype=cfg.dtype, dtype_choice=why)
