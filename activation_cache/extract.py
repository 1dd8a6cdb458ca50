"""Extraction: prompts -> batches -> nnsight tracer -> HDF5 store, resumably.

The Python API behind ``ret-extract``::

    from activation_cache.extract import ExtractConfig, extract
    result = extract(ExtractConfig(prompts="reasoning", out="traj.h5", generate=32))
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from activation_cache import schema
from activation_cache.errors import InputError, option
from activation_cache.models import LoadedModel, load_model
from activation_cache.prompts import Prompt, prompts_from_records, read_prompts, render_prompt
from activation_cache.tracer import Sampling, Traced, Tracer
from activation_cache.writer import Batch, StoreSpec, StoreWriter

log = logging.getLogger(__name__)


@dataclass
class ExtractConfig:
    """Settings of one extraction (each is a ``ret-extract`` flag).

    prompts: a ``.txt`` / ``.jsonl`` path or built-in set name, or prompts in
        memory: a list of strings, JSONL-style dicts or :class:`~activation_cache.prompts.Prompt`
        (see :func:`~activation_cache.prompts.prompts_from_records`). The store
        records their digest, so a resume with other prompts is refused.
    layers: ``"all"``, or a comma list of block indices / ranges (``"0,5,10-12"``,
        negative counts from the end), optionally including ``"embed"``.
    generate: 0 = forward mode (prompt tokens only); N > 0 = generate mode,
        prompt plus up to N generated tokens per sequence.
    max_tokens: prompts longer than this (in tokens) are truncated, with a warning.
    chat: render plain-text prompts through the chat template (``messages``
        prompts always are).
    limit: use only the first ``limit`` prompts of the source (before sharding).
    """

    prompts: str | Sequence
    out: str
    model: str | None = None
    layers: str = "all"
    embed: bool = False
    generate: int = 0
    batch_size: int = 8
    dtype: str = "float16"
    compression: str | None = None
    max_tokens: int = 512
    chat: bool = False
    limit: int | None = None
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    num_shards: int = 1
    shard_index: int = 0
    overwrite: bool = False
    block_path: str | None = None
    embed_path: str | None = None

    def validate(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"{option('batch_size')} must be >= 1, got {self.batch_size}")
        if self.generate < 0:
            raise InputError(f"{option('generate')} must be >= 0, got {self.generate}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"{option('limit')} must be >= 1, got {self.limit}")
        if self.max_tokens < 1:
            raise InputError(f"{option('max_tokens')} must be >= 1, got {self.max_tokens}")
        if not 0 <= self.shard_index < self.num_shards:
            raise InputError(f"{option('shard_index')} {self.shard_index} is not in 0..{self.num_shards - 1} ({option('num_shards')} {self.num_shards})")
        if self.dtype not in schema.HIDDEN_DTYPES:
            raise InputError(f"unknown {option('dtype')} {self.dtype!r}; choose from {', '.join(schema.HIDDEN_DTYPES)}")
        if self.compression not in schema.COMPRESSIONS:
            raise InputError(f"unknown {option('compression')} {self.compression!r}; choose from lzf, gzip or none")


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


def parse_layers(spec: str, n_layers: int, embed: bool = False) -> list[str]:
    """Layer names from a spec like ``"all"``, ``"0,5,10-12"``, ``"-1"`` or ``"embed,0"``."""
    names: list[str] = [schema.EMBED] if embed else []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        if part == "all":
            names += [str(i) for i in range(n_layers)]
        elif part == schema.EMBED:
            names.append(schema.EMBED)
        else:
            m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
            if not m:
                raise InputError(f"bad {option('layers')} entry {part!r}: use 'all', 'embed', indices or ranges like 3-7")
            # Negative ends count from the last layer, so "2--1" is layer 2 to the last one.
            lo, hi = (_layer_index(int(v), n_layers) for v in (m[1], m[2] or m[1]))
            if lo > hi:
                raise InputError(f"bad {option('layers')} range {part!r}: it selects layers {lo}..{hi}, which is empty")
            names += [str(j) for j in range(lo, hi + 1)]
    out = list(dict.fromkeys(names))  # dedupe, keep order
    if not out:
        raise InputError(f"{option('layers')} {spec!r} selects no layer")
    return sorted(out, key=lambda n: -1 if n == schema.EMBED else int(n))


def _layer_index(i: int, n_layers: int) -> int:
    j = i + n_layers if i < 0 else i
    if not 0 <= j < n_layers:
        raise InputError(f"unknown layer {i}: the model has layers 0..{n_layers - 1} (and 'embed')")
    return j


def shard_slice(n: int, num_shards: int, shard_index: int) -> slice:
    """Contiguous share of ``n`` prompts for one shard, so merging keeps order."""
    return slice(shard_index * n // num_shards, (shard_index + 1) * n // num_shards)


def prepare(cfg: ExtractConfig, loaded: LoadedModel) -> Prepared:
    """Read, shard, render and tokenise the prompts; resolve the layers."""
    prompts = (read_prompts(cfg.prompts) if isinstance(cfg.prompts, (str, Path)) else
               prompts_from_records(cfg.prompts))[: cfg.limit]
    # Fields from *all* prompts, so every shard has the same /meta layout.
    meta_fields = _meta_fields(prompts, cfg.generate > 0)
    prompts = prompts[shard_slice(len(prompts), cfg.num_shards, cfg.shard_index)]
    if not prompts:
        raise InputError(f"shard {cfg.shard_index} of {cfg.num_shards} gets no prompts from "
                         f"{cfg.prompts if isinstance(cfg.prompts, (str, Path)) else 'the in-memory prompts'}")
    layers = parse_layers(cfg.layers, loaded.arch.n_layers, cfg.embed)
    tok = loaded.tokenizer
    ids, truncated = [], []
    for p in prompts:
        chat = p.messages is not None or cfg.chat
        text = render_prompt(p, tok, chat=cfg.chat)
        # A rendered chat template already contains its special tokens.
        row = tok(text, add_special_tokens=not chat)["input_ids"]
        if not row:
            raise InputError(f"{p.source}: prompt {p.prompt_id!r} tokenises to nothing")
        if len(row) > cfg.max_tokens:
            truncated.append(p.prompt_id)
            row = row[: cfg.max_tokens]
        ids.append(list(row))
    if truncated:
        shown = ", ".join(truncated[:10]) + (f" and {len(truncated) - 10} more" if len(truncated) > 10 else "")
        log.warning("truncated %d prompt(s) to %s %d: %s", len(truncated), option("max_tokens"), cfg.max_tokens, shown)
    return Prepared(prompts, ids, layers, meta_fields, truncated)


def store_config(cfg: ExtractConfig, loaded: LoadedModel, prep: Prepared) -> dict:
    """The config saved in the store; a rerun resumes only if it is identical."""
    digest = hashlib.sha256(json.dumps([[p.prompt_id, ids] for p, ids in zip(prep.prompts, prep.ids)]).encode())
    conf = asdict(cfg)
    for k in ("out", "overwrite"):
        conf.pop(k)
    if not isinstance(cfg.prompts, (str, Path)):
        conf["prompts"] = "<in memory>"  # their content is in prompts_sha256
    conf.update(model=loaded.name, model_revision=loaded.revision, layers=prep.layers,
                n_prompts=len(prep.prompts), prompts_sha256=digest.hexdigest())
    return conf


def _meta_fields(prompts: Sequence[Prompt], generate: bool) -> list[str]:
    fields = dict.fromkeys(["prompt_id"])
    for p in prompts:
        fields.update(dict.fromkeys(p.meta))
    if generate:
        fields["finish_reason"] = None
    return list(fields)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one batch: ``(input_ids, attention_mask)``, int64 (B, T_max).

    ``left=True`` for ``generate`` (new tokens follow every prompt directly); ``left=False``
    keeps real tokens at positions 0..T-1 for a teacher-forced forward.
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def unpad(traced: Traced, dtype: str) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]:
    """Padded traced tensors -> per-sequence tokens / generated masks and flat hidden rows.

    Returns tokens (list of int32 (T_s,)), generated (list of bool (T_s,)) and
    layer -> (sum_s T_s, D) hidden rows in sequence order, in the store dtype.
    """
    valid = traced.valid
    tokens = [traced.input_ids[b][valid[b]].to(torch.int32).numpy() for b in range(valid.shape[0])]
    generated = [traced.generated[b][valid[b]].numpy() for b in range(valid.shape[0])]
    flat = valid.reshape(-1).nonzero().squeeze(1)
    torch_dtype = {"float16": torch.float16, "float32": torch.float32}[dtype]
    hidden = {}
    for name, h in traced.hidden.items():
        hidden[name] = h.reshape(-1, h.shape[-1]).index_select(0, flat).to(torch_dtype).numpy()
    return tokens, generated, hidden


def _batches(n: int, batch_size: int, start: int) -> Iterator[slice]:
    for lo in range(start, n, batch_size):
        yield slice(lo, min(lo + batch_size, n))


def extract(cfg: ExtractConfig, loaded: LoadedModel | None = None, progress: bool = True) -> ExtractResult:
    """Run (or resume) an extraction into ``cfg.out``; returns counts and timing.

    Resumes from the store's ``n_committed`` when the file exists with the
    same config; refuses a different config unless ``cfg.overwrite``.
    """
    cfg.validate()
    loaded = loaded or load_model(cfg.model, block_path=cfg.block_path, embed_path=cfg.embed_path)
    prep = prepare(cfg, loaded)
    gen = cfg.generate > 0
    spec = StoreSpec(
        model=loaded.name, model_revision=loaded.revision, d_model=loaded.arch.d_model,
        n_model_layers=loaded.arch.n_layers, layers=prep.layers, config=store_config(cfg, loaded, prep),
        meta_fields=prep.meta_fields, dtype=cfg.dtype, compression=cfg.compression,
        tokenizer_json=_tokenizer_json(loaded),
    )
    tracer = Tracer(loaded, prep.layers)
    pad_id = loaded.tokenizer.pad_token_id
    n = len(prep.prompts)
    t0 = time.perf_counter()
    with StoreWriter(cfg.out, spec, overwrite=cfg.overwrite) as writer:
        start_seq, start_tok = writer.n_committed, writer.n_tokens
        bar = tqdm(total=n, initial=start_seq, unit="seq", desc=f"extract {Path(cfg.out).name}",
                   disable=not progress, dynamic_ncols=True)
        try:
            for k, sl in enumerate(_batches(n, cfg.batch_size, start_seq)):
                rows = prep.ids[sl]
                if gen:
                    ids, mask = pad_rows(rows, pad_id, left=True)
                    sampling = Sampling(cfg.sample, cfg.temperature, cfg.top_p, seed=cfg.seed + sl.start)
                    traced = tracer.generate(ids, mask, cfg.generate, sampling)
                else:
                    ids, mask = pad_rows(rows, pad_id, left=False)
                    traced = tracer.forward(ids, mask)
                tokens, generated, hidden = unpad(traced, cfg.dtype)
                meta = [{"prompt_id": p.prompt_id, **p.meta} for p in prep.prompts[sl]]
                if gen:
                    for m, g in zip(meta, generated):
                        m["finish_reason"] = "length" if g.sum() >= cfg.generate else "eos"
                _check_finite(hidden, prep.prompts[sl])
                writer.append(Batch(tokens, generated, hidden, meta))  # StoreWriteError on disk full etc.
                bar.update(sl.stop - sl.start)
                elapsed = time.perf_counter() - t0
                bar.set_postfix(tok_s=f"{(writer.n_tokens - start_tok) / max(elapsed, 1e-9):.0f}")
        finally:
            bar.close()
        result = ExtractResult(Path(cfg.out), writer.n_committed, writer.n_tokens, writer.n_committed - start_seq,
                               writer.n_tokens - start_tok, time.perf_counter() - t0, writer.resumed)
    return result


def _check_finite(hidden: dict[str, np.ndarray], prompts: Sequence[Prompt]) -> None:
    for name, h in hidden.items():
        if not np.isfinite(h).all():
            ids = ", ".join(p.prompt_id for p in prompts)
            raise InputError(f"non-finite hidden states at layer {name} in batch [{ids}] "
                             f"(float16 overflow? try {option('dtype', 'float32')})")


def _tokenizer_json(loaded: LoadedModel) -> str | None:
    backend = getattr(loaded.tokenizer, "backend_tokenizer", None)
    return backend.to_str() if backend is not None else None


@dataclass
class StoragePlan:
    """What ``--dry-run`` prints: the size of the store before writing it."""

    n_prompts: int
    n_layers: int
    d_model: int
    bytes_per_token: int
    prompt_tokens: int
    max_generated_tokens: int

    @property
    def estimated_tokens(self) -> int:
        return self.prompt_tokens + self.max_generated_tokens

    @property
    def estimated_bytes(self) -> int:
        return self.estimated_tokens * self.bytes_per_token

    def describe(self) -> str:
        gib = self.estimated_bytes / 2**30
        return (
            f"prompts: {self.n_prompts}\n"
            f"layers: {self.n_layers} x d_model {self.d_model}\n"
            f"bytes per token: {self.bytes_per_token}\n"
            f"tokens: {self.prompt_tokens} prompt + up to {self.max_generated_tokens} generated\n"
            f"estimated size: {self.estimated_bytes} bytes ({gib:.3f} GiB, before compression)"
        )


def plan(cfg: ExtractConfig, loaded: LoadedModel | None = None) -> StoragePlan:
    """Storage plan of an extraction without running the model."""
    cfg.validate()
    loaded = loaded or load_model(cfg.model, block_path=cfg.block_path, embed_path=cfg.embed_path)
    prep = prepare(cfg, loaded)
    itemsize = np.dtype(schema.HIDDEN_DTYPES[cfg.dtype]).itemsize
    per_token = 4 + 1 + len(prep.layers) * loaded.arch.d_model * itemsize  # token id + mask + hidden rows
    return StoragePlan(len(prep.prompts), len(prep.layers), loaded.arch.d_model, per_token,
                       sum(len(r) for r in prep.ids), cfg.generate * len(prep.prompts))
