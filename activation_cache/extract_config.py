"""The settings of one extraction (:class:`ExtractConfig`): each field is a ``ret-extract`` flag.

Import-light (no torch): ``ret-extract`` builds its flags from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from activation_cache.errors import InputError, option
from activation_cache.settings import (chat_template_setting, compression_setting, device_map_setting,
                                       device_setting, dtype_setting, model_dtype_setting, model_setting,
                                       placement_of, setting)

if TYPE_CHECKING:
    from activation_cache.models import LoadedModel

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
    batch_size: prompts per batch, in prompt order.
    batch_tokens: instead of ``batch_size``, batches by a token budget: prompts
        are grouped by length so little padding is computed (see
        :mod:`activation_cache.batching`); the store still holds them in prompt order.
    max_tokens: prompts longer than this (in tokens) are truncated, with a warning.
    chat: render plain-text prompts through the chat template (``messages``
        prompts always are).
    chat_template: a Jinja chat template (a file path, or the template text)
        used instead of the tokenizer's own, e.g. for a base model or a GGUF
        file that has none (:func:`~activation_cache.prompts.read_chat_template`).
        Applied to the model :meth:`load_model` loads, and to a model passed to
        :func:`~activation_cache.extraction.extract` (:func:`~activation_cache.models.use_chat_template`).
    limit: use only the first ``limit`` prompts of the source (before sharding).
    dtype: storage dtype of the hidden states: ``auto`` (default: the model's
        own dtype when it runs in 16 bits, else float16 when a probe of the
        first prompt stays within half of float16's ±65504 and bfloat16 when
        not; see :mod:`activation_cache.dtype_choice`), ``float16`` (11 bits of
        mantissa, range ±65504), ``bfloat16`` (8 bits, float32's range; exact
        for bf16 models) or ``float32``.
    device, model_dtype, device_map: where and in what precision the model
        runs (:func:`~activation_cache.models.load_model`'s ``device``,
        ``dtype`` and ``device_map``). The store records the resolved weight
        dtype in its config (a resume in another precision is refused) and the
        device in its attributes (a resume on another device is allowed).
    pipeline: write on a background thread while the model traces the next
        batch (:mod:`activation_cache.pipeline`). ``None`` (default): on when
        the model runs on a GPU; on a CPU the thread would compete with the
        model's own threads for the cores.
    """

    prompts: str | Sequence = setting(
        help="a .txt (one prompt a line) or .jsonl file (text or messages), or a built-in set: reasoning, chat")
    out: str = setting(help="output .h5 file (its directory must exist)")
    model: str | None = model_setting()
    layers: str = setting("all", "'all' (default) or indices/ranges like '0,5,10-12', negatives count from the end")
    embed: bool = setting(False, "also store the embedding output as /hidden/embed")
    generate: int = setting(0, "generate up to N tokens per prompt and record them too (default 0: prompt only)",
                            metavar="N")
    batch_size: int = setting(8, "prompts per batch (default 8)")
    batch_tokens: int | None = setting(None, "instead of --batch-size: batches of at most N padded tokens, prompts "
                                             "grouped by length (less padding; the store keeps prompt order)",
                                       metavar="N")
    dtype: str = dtype_setting()
    compression: str | None = compression_setting()
    max_tokens: int = setting(512, "truncate longer prompts (with a warning naming them)")
    chat: bool = setting(False, "render plain-text prompts through the tokenizer's chat template")
    chat_template: str | None = chat_template_setting()
    limit: int | None = setting(None, "use only the first N prompts", metavar="N")
    sample: bool = setting(False, "sample instead of greedy decoding")
    temperature: float = setting(1.0, "sampling temperature (default 1.0)")
    top_p: float = setting(1.0, "nucleus sampling mass (default 1.0: off)")
    seed: int = setting(0, "sampling seed (per batch: seed + first prompt index)")
    num_shards: int = setting(1, "split the prompts into N contiguous shards ...")
    shard_index: int = setting(0, "... and extract only this one (0-based)")
    overwrite: bool = setting(False, "replace an existing store instead of resuming it")
    block_path: str | None = setting(None, "dotted path of the decoder-block ModuleList, for architectures not "
                                           "recognised")
    embed_path: str | None = setting(None, "dotted path of the token embedding module")
    device: str | None = device_setting()
    model_dtype: str | None = model_dtype_setting()
    device_map: str | dict | None = device_map_setting()
    pipeline: bool | None = setting(None, "write on a background thread while the model traces the next batch "
                                          "(auto, the default: on when the model runs on a GPU)",
                                    choices={"auto": None, "on": True, "off": False})

    def load_model(self, progress: bool = True) -> LoadedModel:
        """The model these settings name, on their device and in their precision."""
        from activation_cache.models import load_model

        return load_model(self.model, **placement_of(self), block_path=self.block_path, embed_path=self.embed_path,
                          chat_template=self.chat_template, progress=progress)

    def validate(self) -> None:
        """InputError (one line) for settings no extraction can run with; reads nothing but the chat template."""
        from activation_cache.outputs import check_not_an_input
        from activation_cache.prompts import read_chat_template
        from activation_cache.tracer import check_sampling

        if self.batch_size < 1:
            raise InputError(f"{option('batch_size')} must be >= 1, got {self.batch_size}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise InputError(f"{option('batch_tokens')} must be >= 1, got {self.batch_tokens}")
        if self.generate < 0:
            raise InputError(f"{option('generate')} must be >= 0, got {self.generate}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"{option('limit')} must be >= 1, got {self.limit}")
        if self.max_tokens < 1:
            raise InputError(f"{option('max_tokens')} must be >= 1, got {self.max_tokens}")
        if not 0 <= self.shard_index < self.num_shards:
            raise InputError(f"{option('shard_index')} {self.shard_index} is not in 0..{self.num_shards - 1} ({option('num_shards')} {self.num_shards})")
        check_sampling(temperature=self.temperature, top_p=self.top_p)
        if isinstance(self.prompts, (str, Path)):
            check_not_an_input(self.out, {"prompts": self.prompts})
        check_storage(self.dtype, self.compression)
        if self.chat_template is not None:
            read_chat_template(self.chat_template)


def check_storage(dtype: str, compression: str | None) -> None:
    """InputError (one line) for a storage dtype or compression no store can have."""
    from activation_cache import schema

    if dtype != "auto" and dtype not in schema.HIDDEN_DTYPES:
        raise InputError(f"unknown {option('dtype')} {dtype!r}; choose from auto, {', '.join(schema.HIDDEN_DTYPES)}")
    if compression not in schema.COMPRESSIONS:
        raise InputError(f"unknown {option('compression')} {compression!r}; choose from lzf, gzip or none")
