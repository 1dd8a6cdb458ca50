"""The directions a fine-tune is kept from moving: layer, unit vector and the sign that is blocked.

Feature k is the projection ``a_k = h_ℓk · u_k`` of the output of decoder block ℓ_k
(0-based, as ``/hidden/<ℓ>`` in a trajectory store) on a unit vector u_k. Its sign
says which way is unwanted: ``+1`` keeps a_k from rising above the base model's
(K+ in the blocking loss), ``-1`` keeps it from falling below (K−).

Directions come from what the toolkit already makes — a steering vector
(:func:`from_steering_vector`: contrast vectors, RET group vectors) or any array
(:meth:`BlockedDirections.from_arrays`: forecaster probe weights) — and are saved as
one safetensors file with the layers, signs and names in its metadata (nothing is
unpickled on load).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from activation_cache.errors import InputError

__all__ = ["BlockedDirections", "from_steering_vector", "parse_sign"]

_SIGNS = {"+": 1, "-": -1, "1": 1, "-1": -1, "+1": 1}


def parse_sign(sign: int | str) -> int:
    """``+1`` / ``"+"`` (block rises) or ``-1`` / ``"-"`` (block falls) as ±1."""
    value = _SIGNS.get(str(sign).strip())
    if value is None:
        raise InputError(f"blocked sign must be '+' (block rises) or '-' (block falls), got {sign!r}")
    return value


@dataclass
class BlockedDirections:
    """K blocked features: unit directions at decoder-block outputs, each with the sign it blocks.

    Attributes:
        layers: (K,) decoder block of each direction (0-based).
        vectors: (K, d_model) float32, each row of norm 1.
        signs: (K,) ±1: +1 blocks rises of the projection, -1 blocks falls.
        names: (K,) labels for logs (``drift/<name>``).
        source: how they were made (JSON-serialisable).
    """

    layers: list[int]
    vectors: torch.Tensor
    signs: list[int]
    names: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vectors, dtype=torch.float32).detach().cpu()
        if v.ndim != 2 or len(v) == 0:
            raise InputError(f"blocked directions must be a (K, d_model) array with K >= 1, got shape {tuple(v.shape)}")
        k = len(v)
        if not (len(self.layers) == len(self.signs) == len(self.names) == k):
            raise InputError(f"{k} blocked directions but {len(self.layers)} layers, {len(self.signs)} signs "
                             f"and {len(self.names)} names")
        if not torch.isfinite(v).all():
            raise InputError("blocked directions contain NaN or infinite values")
        norms = v.norm(dim=1)
        if (norms == 0).any():
            raise InputError(f"blocked direction(s) {self._names_at(norms == 0)} are zero vectors")
        if len(set(self.names)) != k:
            raise InputError(f"blocked direction names must be unique, got {self.names}")
        self.vectors = v / norms[:, None]
        self.layers = [int(x) for x in self.layers]
        self.signs = [parse_sign(s) for s in self.signs]
        self.names = [str(n) for n in self.names]

    def _names_at(self, mask: torch.Tensor) -> list[str]:
        return [n for n, m in zip(self.names, mask.tolist()) if m]

    @classmethod
    def from_arrays(cls, vectors: Any, layers: Sequence[int] | int, signs: Sequence[int | str] | int | str = "+",
                    names: Sequence[str] | None = None, source: dict[str, Any] | None = None) -> BlockedDirections:
        """From a (K, d) or (d,) array; a single layer or sign applies to every row. Rows are normalised."""
        v = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        v = v[None] if v.ndim == 1 else v
        k = len(v)
        layers = [layers] * k if isinstance(layers, (int, np.integer)) else list(layers)
        signs = [signs] * k if isinstance(signs, (int, str)) else list(signs)
        names = list(names) if names is not None else [f"d{i}" for i in range(k)]
        return cls(layers, v, signs, names, dict(source or {"method": "arrays"}))

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def capture_layers(self) -> list[int]:
        """The distinct layers, ascending: the blocks whose outputs a step captures."""
        return sorted(set(self.layers))

    def projector(self, device=None) -> torch.Tensor:
        """(len(capture_layers) * d_model, K) float32: ``hidden @ W`` gives every a_k from the
        capture's concatenated outputs (:class:`~ret_toolkit.steering.detect.LayerCapture` order)."""
        d, slots = self.d_model, {layer: i for i, layer in enumerate(self.capture_layers)}
        w = torch.zeros(len(slots) * d, len(self))
        for k, (layer, u) in enumerate(zip(self.layers, self.vectors)):
            w[slots[layer] * d:(slots[layer] + 1) * d, k] = u
        return w.to(device) if device is not None else w

    def check_model(self, n_layers: int, d_model: int, what: str = "the model") -> None:
        """InputError unless every layer exists in ``what`` and the width is its ``d_model``."""
        if self.d_model != d_model:
            raise InputError(f"blocked directions have d_model {self.d_model} but {what} has {d_model}")
        bad = [x for x in self.layers if not 0 <= x < n_layers]
        if bad:
            raise InputError(f"blocked direction layer(s) {bad} out of range: {what} has blocks 0-{n_layers - 1}")

    def random_like(self, seed: int = 0) -> BlockedDirections:
        """The same layers and signs with uniformly random unit directions (a control)."""
        g = torch.Generator().manual_seed(seed)
        return BlockedDirections(list(self.layers), torch.randn(self.vectors.shape, generator=g), list(self.signs),
                                 [f"random{i}" for i in range(len(self))],
                                 {"method": "random_like", "seed": seed, "of": self.source})

    def fingerprint(self) -> str:
        """12 hex digits of the content (vectors, layers, signs): names a saved copy."""
        h = hashlib.sha256(self.vectors.numpy().tobytes())
        h.update(json.dumps([self.layers, self.signs]).encode())
        return h.hexdigest()[:12]

    def save(self, path: str | Path) -> Path:
        """One safetensors file: tensor ``vectors`` (K, d) and metadata ``layers``, ``signs``, ``names``, ``source``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "ret_toolkit.blocked_directions", "layers": json.dumps(self.layers),
                "signs": json.dumps(self.signs), "names": json.dumps(self.names), "source": json.dumps(self.source)}
        save_file({"vectors": self.vectors.contiguous()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> BlockedDirections:
        """Read :meth:`save`'s file; InputError naming the file when it is missing or not one."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"blocked directions file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "ret_toolkit.blocked_directions":
                    raise InputError(f"{path}: not a blocked-directions file (no ret_toolkit.blocked_directions "
                                     "metadata); build one with BlockedDirections(...).save()")
                vectors = f.get_tensor("vectors")
            fields = {k: json.loads(meta[k]) for k in ("layers", "signs", "names", "source")}
        except InputError:
            raise
        except Exception as e:  # truncated file, bad header, missing key
            raise InputError(f"{path}: not a readable blocked-directions file ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
        return cls(fields["layers"], vectors, fields["signs"], fields["names"], fields["source"])


def from_steering_vector(vector, sign: int | str = "+", name: str | None = None) -> BlockedDirections:
    """One blocked direction per layer of a :class:`~ret_toolkit.steering.SteeringVector` (or its saved path).

    ``sign="+"`` blocks moves *toward* the vector (the behaviour it steers into).
    """
    from ret_toolkit.steering import SteeringVector

    if not isinstance(vector, SteeringVector):
        vector = SteeringVector.load(vector)
    base = name or (vector.construction or {}).get("method", "vector")
    layers = list(vector.layers)
    return BlockedDirections(layers, torch.stack([torch.as_tensor(vector[x], dtype=torch.float32) for x in layers]),
                             [sign] * len(layers), [f"{base}@{x}" if len(layers) > 1 else str(base) for x in layers],
                             {"method": "steering_vector", "model": vector.model,
                              "construction": dict(vector.construction or {})})
