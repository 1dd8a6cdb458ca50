"""What every store's running statistics must equal: numpy's over its committed rows."""

from __future__ import annotations

import numpy as np


def assert_stats_are_numpys(store, layer: str) -> None:
    """The kept count, mean, variance and row-norm quantiles of ``layer`` against numpy over the rows read back."""
    x = np.asarray(store.hidden_dataset(layer)[: store.n_tokens], np.float64)
    kept = store.layer_stats(layer)
    assert kept is not None and kept.count == len(x) == store.n_tokens
    np.testing.assert_allclose(kept.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kept.var, x.var(0), rtol=1e-10, atol=1e-12)
    q = (0.0, 0.01, 0.5, 0.99, 1.0)
    np.testing.assert_allclose(store.norm_quantiles(layer, q), np.quantile(np.linalg.norm(x, axis=1), q), rtol=1e-6)
