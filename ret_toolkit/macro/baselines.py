"""Baseline groupings with the same K as RET, for the held-out evaluation (docs/architecture.md §3.1).

- ``kmeans_raw``: k-means on the standardised hidden state h_t itself;
- ``kmeans_pca``: k-means on PCA_d(h_t), the linear macrovariable of the same size d as RET's z;
- ``kmeans_window``: k-means on the causal window mean of h over the encoder's window w,
  the honest baseline for a windowed encoder (smoothing alone buys temporal consistency);
- ``ema``: k-means on a causal exponential moving average of h with a half-life of w
  tokens, a deliberately slow control (slow by construction, with no learning at all).

Each also has a continuous representation for the closure test (``Baselines.z``).
The micro variables the closure test adds are ``Baselines.micro`` (PCA_64(h_t), the
token now) and ``Baselines.micro_window`` (PCA_64 of the whole window
[h_{t-w+1}, ..., h_t]: everything a windowed encoder could have read).
All inputs are standardised hidden states, (T, D) per sequence, float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

BASELINES = ("kmeans_raw", "kmeans_pca", "kmeans_window", "ema")


def causal_window_mean(h: np.ndarray, w: int) -> np.ndarray:
    """Mean of rows max(0, t-w+1)..t for every t: (T, D) -> (T, D) float.

    The first w-1 rows average the shorter history that exists (no padding),
    so nothing from the future or from another sequence leaks in.
    """
    if w < 1:
        raise ValueError(f"window w must be >= 1, got {w}")
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"h must be (T, D), got shape {h.shape}")
    # Prefix sums turn every window into one subtraction: O(T D) for any w.
    csum = np.concatenate([np.zeros((1, h.shape[1])), np.cumsum(h, axis=0)])
    t = np.arange(h.shape[0])
    start = np.maximum(0, t - w + 1)
    return (csum[t + 1] - csum[start]) / (t + 1 - start)[:, None]


def causal_ema(h: np.ndarray, half_life: float) -> np.ndarray:
    """Exponential moving average m_t = (1-a) m_{t-1} + a h_t, m_0 = h_0: (T, D) -> (T, D) float.

    ``a = 1 - 2^(-1/half_life)``: a token's weight halves every ``half_life`` tokens.
    Causal and per sequence, like :func:`causal_window_mean`.
    """
    if half_life <= 0:
        raise ValueError(f"half_life must be > 0, got {half_life}")
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"h must be (T, D), got shape {h.shape}")
    a = 1.0 - 0.5 ** (1.0 / half_life)
    out = np.empty_like(h)
    m = h[0] if len(h) else None
    for t in range(len(h)):
        m = m + a * (h[t] - m)
        out[t] = m
    return out


def causal_window_stack(x: np.ndarray, w: int) -> np.ndarray:
    """Rows x_{t-w+1..t} side by side, oldest first: (T, m) -> (T, w*m); before the start, zeros.

    Zeros are the mean of standardised (or PCA-projected) inputs, so a short
    history reads as "nothing known" rather than as a copy of the first token.
    """
    x = np.asarray(x, dtype=np.float32)
    padded = np.concatenate([np.zeros((w - 1, x.shape[1]), np.float32), x])
    return np.concatenate([padded[j : j + len(x)] for j in range(w)], axis=1)


@dataclass
class Baselines:
    """Fitted baselines: k-means per name, and the PCAs that produce their z.

    ``pca_h`` has max(d, micro_dim) components of h: its first d give the
    ``kmeans_pca`` z and its first micro_dim the micro variable (PCA
    components are nested, so one fit serves both). ``pca_stack`` projects
    the stacked window of micro variables to micro_dim.
    """

    kmeans: dict[str, KMeans]
    pca_h: PCA
    pca_window: PCA
    pca_ema: PCA
    pca_stack: PCA
    k: int
    d: int
    window: int
    micro_dim: int
    #: half-life of the ``ema`` control, tokens (by default the window)
    ema_half_life: float = 0.0
    #: tokens of the whole-window micro variable (by default the window: what the encoder reads)
    stack_window: int = 0

    def __post_init__(self):
        self.ema_half_life = float(self.ema_half_life or self.window)
        self.stack_window = int(self.stack_window or self.window)

    def micro(self, h_seq: np.ndarray) -> np.ndarray:
        """PCA_micro_dim of standardised h: (T, D) -> (T, micro_dim) float32."""
        return self._pca_h(h_seq)[:, : self.micro_dim]

    def micro_window(self, h_seq: np.ndarray) -> np.ndarray:
        """PCA_micro_dim of the stacked window [micro_{t-w+1}, ..., micro_t]: (T, D) -> (T, micro_dim) float32."""
        return self.pca_stack.transform(causal_window_stack(self.micro(h_seq), self.stack_window)).astype(np.float32)

    def z(self, name: str, h_seq: np.ndarray) -> np.ndarray:
        """Continuous representation of a baseline: (T, D) -> (T, d) (``kmeans_raw``: (T, micro_dim)).

        ``kmeans_raw`` has no small z of its own; its stand-in is the micro
        variable itself, so its closure gap is ~0 by construction.
        """
        self._check(name)
        if name == "kmeans_raw":
            return self.micro(h_seq)
        if name == "kmeans_pca":
            return self._pca_h(h_seq)[:, : self.d]
        if name == "ema":
            return self.pca_ema.transform(self._ema(h_seq)).astype(np.float32)
        return self.pca_window.transform(self._window(h_seq)).astype(np.float32)

    def assign(self, name: str, h_seq: np.ndarray) -> np.ndarray:
        """Group id per token: (T, D) -> (T,) int64 in [0, k)."""
        self._check(name)
        if name == "kmeans_raw":
            x = np.asarray(h_seq, dtype=np.float32)
        elif name == "kmeans_pca":
            x = self._pca_h(h_seq)[:, : self.d]
        elif name == "ema":
            x = self._ema(h_seq)
        else:
            x = self._window(h_seq)
        with threadpool_limits(1):
            return self.kmeans[name].predict(x).astype(np.int64)

    def _pca_h(self, h_seq: np.ndarray) -> np.ndarray:
        return self.pca_h.transform(np.asarray(h_seq, dtype=np.float32)).astype(np.float32)

    def _window(self, h_seq: np.ndarray) -> np.ndarray:
        return causal_window_mean(h_seq, self.window).astype(np.float32)

    def _ema(self, h_seq: np.ndarray) -> np.ndarray:
        return causal_ema(h_seq, self.ema_half_life).astype(np.float32)

    @staticmethod
    def _check(name: str) -> None:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


def fit_baselines(
    h_train: Sequence[np.ndarray],
    k: int,
    d: int,
    seed: int = 0,
    window: int = 8,
    micro_dim: int = 64,
    max_rows: int = 20000,
    n_init: int = 4,
    ema_half_life: float | None = None,
    stack_window: int | None = None,
) -> Baselines:
    """Fit the four baselines and the two micro projections on training sequences.

    h_train: standardised hidden states of training sequences, one (T_s, D)
        array each; windows, moving averages and stacks are formed inside each
        sequence (nothing crosses a boundary). ``window``: the window mean's w,
        normally the encoder's; ``ema_half_life`` and ``stack_window`` (the
        whole-window micro variable) default to it (a tuning grid varies them apart).
    k: groups (RET's K); d: RET's z size; micro_dim: PCA size of the micro variables.
    At most ``max_rows`` rows (a seeded random subset, shared by all fits) are
    used: k-means and PCA statistics settle long before that, and the
    576-dimensional raw k-means dominates the cost. Deterministic given seed.
    """
    seqs = [np.asarray(h, dtype=np.float32) for h in h_train]
    if not seqs or any(h.ndim != 2 for h in seqs) or len({h.shape[1] for h in seqs}) != 1:
        raise ValueError("h_train must be a non-empty list of (T, D) arrays with one D")
    n, dim = sum(len(h) for h in seqs), seqs[0].shape[1]
    if n < k:
        raise ValueError(f"need at least k={k} training tokens, got {n}")
    if not 1 <= d <= dim:
        raise ValueError(f"d must be in 1..{dim} (the hidden size), got {d}")
    # One thread: with the cores busy, OpenMP/BLAS oversubscription made these fits 30x slower
    # (k-means on 20k x 576: 37 s vs 1.2 s); on an idle machine one thread costs at most 2x.
    with threadpool_limits(1):
        return _fit(seqs, k, d, seed, window, micro_dim, max_rows, n_init, float(ema_half_life or window),
                    int(stack_window or window))


def _fit(seqs, k, d, seed, window, micro_dim, max_rows, n_init, half_life, stack_window) -> Baselines:
    n, dim = sum(len(h) for h in seqs), seqs[0].shape[1]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, max_rows), replace=False))

    def sample(per_seq) -> np.ndarray:
        return np.concatenate(per_seq)[rows].astype(np.float32)

    h = sample(seqs)
    win = sample([causal_window_mean(x, window) for x in seqs])
    ema = sample([causal_ema(x, half_life) for x in seqs])

    n_comp = min(max(d, micro_dim), dim, len(rows))
    # covariance_eigh: one D x D eigendecomposition, exact and fast when N >> D.
    pca_h = PCA(n_components=n_comp, svd_solver="covariance_eigh").fit(h)
    micro_dim = min(micro_dim, n_comp)
    stack = sample([causal_window_stack(pca_h.transform(x)[:, :micro_dim], stack_window) for x in seqs])

    def kmeans(x: np.ndarray) -> KMeans:
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)

    return Baselines(
        kmeans={
            "kmeans_raw": kmeans(h),
            "kmeans_pca": kmeans(pca_h.transform(h)[:, :d].astype(np.float32)),
            "kmeans_window": kmeans(win),
            "ema": kmeans(ema),
        },
        pca_h=pca_h,
        pca_window=PCA(n_components=d, svd_solver="covariance_eigh").fit(win),
        pca_ema=PCA(n_components=d, svd_solver="covariance_eigh").fit(ema),
        pca_stack=PCA(n_components=min(micro_dim, stack.shape[1], len(rows)), svd_solver="covariance_eigh").fit(stack),
        k=k,
        d=d,
        window=window,
        micro_dim=micro_dim,
        ema_half_life=half_life,
        stack_window=stack_window,
    )
