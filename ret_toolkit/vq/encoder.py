"""Set encoder (cells -> one vector) and cell decoder (code -> cells) of the VQ-VAE.

Cells carry a layer index and a position offset; both enter as learned
embeddings, so one network serves blocks of any shape (docs/architecture.md §3.2).
Offsets beyond ±``max_offset`` share the edge embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CellEmbedding(nn.Module):
    """Learned embedding of (layer index, position offset): (B, N) x2 -> (B, N, dim)."""

    def __init__(self, n_layers: int, max_offset: int, dim: int):
        super().__init__()
        self.max_offset = max_offset
        self.layer = nn.Embedding(n_layers, dim)
        self.pos = nn.Embedding(2 * max_offset + 1, dim)

    def forward(self, layer: Tensor, pos: Tensor) -> Tensor:
        return self.layer(layer) + self.pos(pos.clamp(-self.max_offset, self.max_offset) + self.max_offset)


class SetEncoder(nn.Module):
    """Pool a padded set of cells to one vector with a small transformer and a summary token.

    (B, N, D) cells, (B, N) layer / pos, (B, N) mask -> (B, code_dim).
    """

    def __init__(self, d_input: int, n_layers: int, max_offset: int, dim: int = 128, depth: int = 2, heads: int = 4,
                 code_dim: int = 32):
        super().__init__()
        self.proj = nn.Linear(d_input, dim)
        self.where = CellEmbedding(n_layers, max_offset, dim)
        self.summary = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, code_dim))

    def forward(self, cells: Tensor, layer: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        x = self.proj(cells) + self.where(layer, pos)
        x = torch.cat([self.summary.expand(len(x), -1, -1), x], dim=1)
        pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        return self.out(self.blocks(x, src_key_padding_mask=pad)[:, 0])


class CellDecoder(nn.Module):
    """Reconstruct every cell from the block's code and the cell's (layer, pos).

    (B, code_dim) code, (B, N) layer / pos -> (B, N, D). A per-cell MLP: the
    code is the only thing that differs between blocks, so it must carry them.
    """

    def __init__(self, d_output: int, n_layers: int, max_offset: int, dim: int = 128, code_dim: int = 32):
        super().__init__()
        self.code = nn.Linear(code_dim, dim)
        self.where = CellEmbedding(n_layers, max_offset, dim)
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, d_output))

    def forward(self, q: Tensor, layer: Tensor, pos: Tensor) -> Tensor:
        return self.net(self.code(q)[:, None, :] + self.where(layer, pos))
