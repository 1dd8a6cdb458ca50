"""Networks of the RET encoder: the causal windowed encoder f and the predictor g.

Shapes: B batch, T tokens, D hidden size of the language model, w window,
d = z_dim, K = max_horizon.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalWindowEncoder(nn.Module):
    """z_t = f(h_{t-w+1..t}): one macro vector per full window.

    A valid (unpadded) Conv1d with kernel w is exactly "flatten the window and
    apply a linear map", done without materialising the (T, w*D) unfolding, so
    it stays cheap for D in the hundreds on a CPU. An MLP head follows.

    (B, T, D) -> (B, T - w + 1, d); output index i belongs to token t = i + w - 1.
    """

    def __init__(self, d_input: int, window: int = 8, hidden: int = 256, z_dim: int = 16):
        super().__init__()
        self.window = window
        self.conv = nn.Conv1d(d_input, hidden, kernel_size=window)
        self.head = nn.Sequential(
            nn.LayerNorm(hidden),  # LayerNorm, not BatchNorm: no cross-sample (or cross-rank) statistics
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, z_dim),
        )

    def forward(self, h: Tensor) -> Tensor:
        if h.shape[1] < self.window:
            raise ValueError(f"need at least window={self.window} tokens, got {h.shape[1]}")
        x = self.conv(h.transpose(1, 2)).transpose(1, 2)  # (B, T-w+1, hidden)
        return self.head(x)


class HorizonPredictor(nn.Module):
    """g(z_t, k): predicts the target encoder's z_{t+k} for horizon k in 1..K.

    The horizon enters as a learned embedding added to the projected z, so one
    network serves all horizons. (..., d), k int -> (..., d).

    With ``use_horizon=False`` the predictor sees z only and must give one
    prediction for every k in 1..K: the loss is then lowest when the target's
    z_{t+1..t+K} agree, i.e. it asks the encoder for slow features.
    """

    def __init__(self, z_dim: int = 16, hidden: int = 256, max_horizon: int = 4, use_horizon: bool = True):
        super().__init__()
        self.max_horizon = max_horizon
        self.proj = nn.Linear(z_dim, hidden)
        self.horizon = nn.Embedding(max_horizon, hidden) if use_horizon else None
        self.net = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, z_dim),
        )

    def forward(self, z: Tensor, k: int) -> Tensor:
        if not 1 <= k <= self.max_horizon:
            raise ValueError(f"horizon k={k} outside 1..{self.max_horizon}")
        x = self.proj(z)
        return self.net(x if self.horizon is None else x + self.horizon.weight[k - 1])


def normalized_mse(pred: Tensor, target: Tensor) -> Tensor:
    """2 - 2 cos(pred, target) per vector: (..., d) x (..., d) -> (...)."""
    return 2 - 2 * F.cosine_similarity(pred, target, dim=-1)


def variance_loss(z: Tensor, eps: float = 1e-4) -> Tensor:
    """VICReg hinge keeping each dimension's std >= 1 over the batch. (N, d) -> ()."""
    std = (z.var(dim=0) + eps).sqrt()
    return F.relu(1 - std).mean()


def covariance_loss(z: Tensor) -> Tensor:
    """VICReg decorrelation: squared off-diagonal covariance / d. (N, d) -> ()."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / max(n - 1, 1)
    off = cov - torch.diag_embed(cov.diagonal())
    return off.pow(2).sum() / d
