"""What fixes a store's layout and identity (:class:`StoreSpec`), and one batch of sequences to write (:class:`Batch`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from activation_cache import schema
from activation_cache.errors import InputError, option


@dataclass
class StoreSpec:
    """Everything that fixes a store's layout and identity.

    ``config`` is the full extraction config (JSON-serialisable). A store is
    resumed only if its stored config equals this one exactly.
    """

    model: str
    model_revision: str
    d_model: int
    n_model_layers: int
    layers: list[str]
    config: dict[str, Any]
    meta_fields: list[str] = field(default_factory=lambda: ["prompt_id"])
    dtype: str = "float16"
    compression: str | None = None
    tokenizer_json: str | None = None
    model_dtype: str | None = None
    device: str | None = None
    dtype_choice: str | None = None  # why this dtype (activation_cache.dtype_choice); an attribute, not config

    def __post_init__(self) -> None:
        if self.dtype not in schema.HIDDEN_DTYPES:
            raise InputError(f"unknown {option('dtype')} {self.dtype!r}; choose from {sorted(schema.HIDDEN_DTYPES)}")
        if self.compression not in schema.COMPRESSIONS:
            raise InputError(f"unknown {option('compression')} {self.compression!r}; choose from lzf, gzip or none")
        self.layers = [schema.layer_name(x) for x in self.layers]
        if "prompt_id" not in self.meta_fields:
            self.meta_fields = ["prompt_id", *self.meta_fields]

    @property
    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)


@dataclass
class Batch:
    """One batch of whole sequences, ready to store.

    tokens:    per sequence, int array (T_s,)
    generated: per sequence, bool array (T_s,)
    hidden:    layer name -> array (sum_s T_s, D), rows in sequence order
    meta:      per sequence, {field: str}
    stats:     layer name -> :class:`~activation_cache.running_stats.RowStats` of the rows as
               stored, and ``norms``: layer name -> float32 (sum_s T_s,) their L2 norms; both
               optional (the writer computes them when absent; an extraction computes them
               on the model's device)
    """

    tokens: list[np.ndarray]
    generated: list[np.ndarray]
    hidden: dict[str, np.ndarray]
    meta: list[dict[str, str]]
    stats: dict[str, Any] | None = None
    norms: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = sum(len(t) for t in self.tokens)
        if len(self.generated) != len(self.tokens) or len(self.meta) != len(self.tokens):
            raise ValueError("Batch: tokens, generated and meta must have one entry per sequence")
        for name, h in self.hidden.items():
            if h.shape[0] != n:
                raise ValueError(f"Batch: hidden[{name}] has {h.shape[0]} rows, tokens have {n}")
