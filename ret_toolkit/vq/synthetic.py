"""Synthetic sources with known mutual information, embedded as high-dimensional "hidden states".

A source is a pair of symbols (X, Y): X uniform on M symbols; Y = X with
probability 1 - eps, else uniform on the M symbols. Its MI in bits is exact:

    I(X; Y) = log2 M - H(Y | X),  P(Y = X | X) = 1 - eps + eps/M,  P(Y = y' | X) = eps/M otherwise.

Each symbol is embedded into a block of cells (n_cells, D) through a random,
fixed non-linear map (a random two-layer tanh network applied to a per-symbol
random code plus a continuous nuisance variable), plus Gaussian noise. A VQ
model trained on the cells of X and one trained on the cells of Y should give
codes whose MI approaches I(X; Y) (docs/architecture.md §3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ret_toolkit.vq.blocks import TensorBlocks


@dataclass(frozen=True)
class SymbolSource:
    """X uniform on ``n_symbols``; Y = X with probability 1 - ``eps``, else uniform."""

    n_symbols: int
    eps: float

    @property
    def true_mi_bits(self) -> float:
        M, e = self.n_symbols, self.eps
        a, b = 1 - e + e / M, e / M
        h = -(a * math.log2(a) if a > 0 else 0.0) - ((M - 1) * b * math.log2(b) if b > 0 else 0.0)
        return max(math.log2(M) - h, 0.0)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y), int64 (n,) each."""
        x = rng.integers(self.n_symbols, size=n)
        y = np.where(rng.random(n) < self.eps, rng.integers(self.n_symbols, size=n), x)
        return x, y


#: the validation ladder: ten sources from 0 to 4 bits, support <= 16
VALIDATION_SOURCES = (
    SymbolSource(16, 1.0), SymbolSource(16, 0.9), SymbolSource(16, 0.75), SymbolSource(2, 0.0),
    SymbolSource(16, 0.5), SymbolSource(4, 0.0), SymbolSource(16, 0.25), SymbolSource(8, 0.0),
    SymbolSource(16, 0.1), SymbolSource(16, 0.0),
)


class RandomEmbedding:
    """A fixed random map symbol -> block of cells (n_cells, d), non-linear, with nuisance and noise.

    cells = tanh(W2 tanh(W1 (c_symbol + nuisance_scale * u)) + b) + noise * N(0, 1),
    with c_symbol a random code per symbol and u a per-sample nuisance vector.
    """

    def __init__(self, n_symbols: int, n_cells: int = 4, d: int = 64, latent: int = 16, nuisance: float = 0.3,
                 noise: float = 0.3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.codes = torch.randn(n_symbols, latent, generator=g)
        self.w1 = torch.randn(latent, 4 * latent, generator=g) / math.sqrt(latent)
        self.w2 = torch.randn(4 * latent, n_cells * d, generator=g) * (2.0 / math.sqrt(4 * latent))
        self.b = torch.randn(n_cells * d, generator=g) * 0.1
        self.n_cells, self.d, self.nuisance, self.noise, self.seed = n_cells, d, nuisance, noise, seed

    def __call__(self, symbols: np.ndarray, seed: int) -> torch.Tensor:
        """(n,) int -> (n, n_cells, d) float32."""
        g = torch.Generator().manual_seed(seed)
        s = torch.as_tensor(symbols, dtype=torch.long)
        u = torch.randn(len(s), self.codes.shape[1], generator=g)
        h = torch.tanh(torch.tanh((self.codes[s] + self.nuisance * u) @ self.w1) @ self.w2 + self.b)
        h = h + self.noise * torch.randn(h.shape, generator=g)
        return h.reshape(len(s), self.n_cells, self.d)


def embedded_blocks(symbols: np.ndarray, embedding: RandomEmbedding, seed: int, n_layers: int = 2) -> TensorBlocks:
    """Blocks of ``embedding.n_cells`` cells laid out as ``n_layers`` layers x positions ending at offset 0."""
    n_pos = embedding.n_cells // n_layers
    if n_pos * n_layers != embedding.n_cells:
        raise ValueError(f"n_cells {embedding.n_cells} is not a multiple of n_layers {n_layers}")
    layer = torch.arange(n_layers).repeat_interleave(n_pos)
    pos = torch.arange(-n_pos + 1, 1).repeat(n_layers)
    return TensorBlocks(embedding(symbols, seed), layer, pos)
