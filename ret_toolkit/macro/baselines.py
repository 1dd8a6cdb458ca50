"""Baseline groupings with the same K as RET, for the held-out evaluation (docs/architecture.md §3.1).

- ``kmeans_raw``: k-means on the standardised hidden state h_t itself;
- ``kmeans_pca``: k-means on PCA_d(h_t), the linear macrovariable of the same size d as RET's z;
- ``kmeans_window``: k-means on the causal window mean of h over the encoder's window w,
  the honest baseline for a windowed encoder (smoothing alone buys temporal consistency).

Each also has a continuous representation for the closure test (``Baselines.z``),
and ``Baselines.micro`` gives the shared micro variable PCA_64(h_t).
All inputs are standardised hidden states, (T, D) per sequence, float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

BASELINES = ("kmeans_raw", "kmeans_pca", "kmeans_window")


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


@dataclass
class Baselines:
    """Fitted baselines: k-means per name, and the PCAs that produce their z.

    ``pca_h`` has max(d, micro_dim) components of h: its first d give the
    ``kmeans_pca`` z and its first micro_dim the micro variable (PCA
    components are nested, so one fit serves both).
    """

    kmeans: dict[str, KMeans]
    pca_h: PCA
    pca_window: PCA
    k: int
    d: int
    window: int
    micro_dim: int

    def micro(self, h_seq: np.ndarray) -> np.ndarray:
        """PCA_micro_dim of standardised h: (T, D) -> (T, micro_dim) float32."""
        return self._pca_h(h_seq)[:, : self.micro_dim]

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
        return self.pca_window.transform(self._window(h_seq)).astype(np.float32)

    def assign(self, name: str, h_seq: np.ndarray) -> np.ndarray:
        """Group id per token: (T, D) -> (T,) int64 in [0, k)."""
        self._check(name)
        if name == "kmeans_raw":
            x = np.asarray(h_seq, dtype=np.float32)
        elif name == "kmeans_pca":
            x = self._pca_h(h_seq)[:, : self.d]
        else:
            x = self._window(h_seq)
        with threadpool_limits(1):
            return self.kmeans[name].predict(x).astype(np.int64)

    def _pca_h(self, h_seq: np.ndarray) -> np.ndarray:
        return self.pca_h.transform(np.asarray(h_seq, dtype=np.float32)).astype(np.float32)

    def _window(self, h_seq: np.ndarray) -> np.ndarray:
        return causal_window_mean(h_seq, self.window).astype(np.float32)

    @staticmethod
    def _check(name: str) -> None:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


def fit_baselines(
    h_train: np.ndarray,
    windows_train: np.ndarray,
    k: int,
    d: int,
    seed: int = 0,
    window: int = 8,
    micro_dim: int = 64,
    max_rows: int = 20000,
    n_init: int = 4,
) -> Baselines:
    """Fit the three baselines on training tokens.

    h_train: (N, D) standardised hidden states of training sequences, stacked.
    windows_train: (N, D) their causal window means, computed per sequence with
        :func:`causal_window_mean` and the encoder's window (so no window crosses
        a sequence boundary); ``window`` must be that same w, used for held-out data.
    k: groups (RET's K); d: RET's z size; micro_dim: PCA size of the micro variable.
    At most ``max_rows`` rows (a seeded random subset, shared by all fits) are
    used: k-means and PCA statistics settle long before that, and the
    576-dimensional raw k-means dominates the cost. Deterministic given seed.
    """
    h_train = np.asarray(h_train, dtype=np.float32)
    windows_train = np.asarray(windows_train, dtype=np.float32)
    if h_train.ndim != 2 or windows_train.shape != h_train.shape:
        raise ValueError(f"h_train and windows_train must both be (N, D), got {h_train.shape} and {windows_train.shape}")
    n, dim = h_train.shape
    if n < k:
        raise ValueError(f"need at least k={k} training tokens, got {n}")
    if not 1 <= d <= dim:
        raise ValueError(f"d must be in 1..{dim} (the hidden size), got {d}")
    # One thread: with the cores busy, OpenMP/BLAS oversubscription made these fits 30x slower
    # (k-means on 20k x 576: 37 s vs 1.2 s); on an idle machine one thread costs at most 2x.
    with threadpool_limits(1):
        return _fit(h_train, windows_train, k, d, seed, window, micro_dim, max_rows, n_init)


def _fit(h_train, windows_train, k, d, seed, window, micro_dim, max_rows, n_init) -> Baselines:
    n, dim = h_train.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, max_rows), replace=False))
    h, win = h_train[rows], windows_train[rows]

    n_comp = min(max(d, micro_dim), dim, len(rows))
    # covariance_eigh: one D x D eigendecomposition, exact and fast when N >> D.
    pca_h = PCA(n_components=n_comp, svd_solver="covariance_eigh").fit(h)
    pca_window = PCA(n_components=d, svd_solver="covariance_eigh").fit(win)

    def kmeans(x: np.ndarray) -> KMeans:
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)

    return Baselines(
        kmeans={
            "kmeans_raw": kmeans(h),
            "kmeans_pca": kmeans(pca_h.transform(h)[:, :d].astype(np.float32)),
            "kmeans_window": kmeans(win),
        },
        pca_h=pca_h,
        pca_window=pca_window,
        k=k,
        d=d,
        window=window,
        micro_dim=min(micro_dim, n_comp),
    )
