"""Permutation nulls and bootstrap confidence intervals for mutual information and
conditional mutual information (docs/architecture.md §3.3).

All work on the same dense codes and histograms as the estimators; each
resample costs one pass over the samples (a gather and a ``bincount``).
"""

from __future__ import annotations

import numpy as np

from ret_toolkit.info.estimators import (
    cmi_dense,
    combine_codes,
    entropy_of_counts,
    mi_terms,
    prepare_codes,
)


def permutation_test(x, y, n_permutations: int = 200, estimator: str = "plugin", seed: int = 0) -> dict:
    """Is I(X;Y) larger than chance? Shuffles y against x to build the null.

    x, y: (N,) integer codes. Returns plain floats (MI in bits):
    ``value`` (observed MI), ``null_mean`` / ``null_std`` (MI of the shuffled
    pairs: the estimator's own floor for independent data of this size and
    alphabet) and ``p_value = (1 + #{null >= value}) / (1 + n_permutations)``,
    which is never 0 and is uniform under independence.
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    cx, cy = prepare_codes(estimator, x=x, y=y)
    hx, hy, hxy = mi_terms(cx, cy, estimator)
    value = hx + hy - hxy
    # Shuffling y keeps both marginal histograms, so only the joint entropy changes.
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    for i in range(n_permutations):
        joint, size = combine_codes(cx, (rng.permutation(cy[0]), cy[1]))
        null[i] = hx + hy - entropy_of_counts(np.bincount(joint, minlength=size), estimator)
    return null_summary(value, null)


def null_summary(value: float, null: np.ndarray) -> dict:
    """``value``, ``null_mean``, ``null_std`` and the one-sided permutation ``p_value`` of ``value`` against ``null``."""
    # The tolerance keeps exact ties (e.g. a constant x: every MI is 0) from being lost to rounding.
    exceed = int(np.sum(null >= value - 1e-12))
    return {
        "value": float(value),
        "null_mean": float(null.mean()),
        "null_std": float(null.std(ddof=1)) if null.size > 1 else 0.0,
        "p_value": (1 + exceed) / (1 + null.size),
    }


def bootstrap_ci(
    x,
    y,
    n_boot: int = 200,
    alpha: float = 0.05,
    estimator: str = "plugin",
    seed: int = 0,
    method: str = "auto",
) -> dict:
    """(1 - alpha) bootstrap confidence interval for I(X;Y) in bits, resampling pairs with replacement.

    x, y: (N,) integer codes. Returns plain floats ``value`` (MI of the data),
    ``ci_low``, ``ci_high``.

    A resample has only about 63% distinct pairs, so every MI estimate drifts
    upward under resampling; the raw quantiles (``method="percentile"``) then
    sit above the estimate — for independent codes they can exclude 0. The
    other methods remove that drift:

    - ``"basic"``: ``2 * value - quantiles``. Right for the plug-in estimator,
      whose own bias from truth to data is about the drift from data to resample.
    - ``"centered"``: the quantiles shifted by ``mean(boot) - value``, i.e. the
      bootstrap spread around the estimate. Right for the bias-corrected
      estimators (Miller-Madow, jackknife), whose value has no bias to undo.
    - ``"auto"`` (default): ``"basic"`` for plug-in, ``"centered"`` otherwise.
    """
    method = _check_interval(n_boot, alpha, method, estimator)
    cx, cy = prepare_codes(estimator, x=x, y=y)
    hx, hy, hxy = mi_terms(cx, cy, estimator)
    value = hx + hy - hxy
    n = cx[0].size
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)
        bx, by, bxy = mi_terms((cx[0][idx], cx[1]), (cy[0][idx], cy[1]), estimator)
        boot[i] = bx + by - bxy
    lo, hi = bootstrap_interval(boot, value, alpha, method)
    return {"value": float(value), "ci_low": lo, "ci_high": hi}


def bootstrap_mean_ci(x, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """(1 - alpha) percentile bootstrap interval of the mean of ``x`` (N,), resampling its entries.

    For a paired difference pass the per-unit differences (the same unit on both sides).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"x must be a non-empty 1-D array of finite values, got shape {x.shape}")
    _check_interval(n_boot, alpha, "percentile", "plugin")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    lo, hi = np.quantile(x[idx].mean(axis=1), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _check_interval(n_boot: int, alpha: float, method: str, estimator: str) -> str:
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if method not in ("auto", "percentile", "basic", "centered"):
        raise ValueError(f"unknown method {method!r}; choose 'auto', 'percentile', 'basic' or 'centered'")
    if method == "auto":
        return "basic" if estimator == "plugin" else "centered"
    return method


def bootstrap_interval(boot: np.ndarray, value: float, alpha: float, method: str) -> tuple[float, float]:
    """(low, high) of the bootstrap replicates ``boot`` of ``value`` by ``method`` (see :func:`bootstrap_ci`)."""
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    if method == "basic":
        lo, hi = 2 * value - hi, 2 * value - lo
    elif method == "centered":
        drift = boot.mean() - value
        lo, hi = lo - drift, hi - drift
    return float(lo), float(hi)


def paired_bootstrap_ratio(delta: np.ndarray, weight: np.ndarray, n_boot: int = 2000, alpha: float = 0.05,
                           seed: int = 0) -> dict:
    """A paired difference pooled over units, with a bootstrap CI that resamples the units.

    delta: (runs, S) per-unit sums of A - B (a unit: a sequence; a run: a training seed, run r
    of A paired with run r of B); weight: (S,) what each unit's sum is over (its tokens or
    pairs). The difference is the mean over runs of ``delta[r].sum() / weight.sum()``; one
    resample draws S units with replacement, the same draw for every run. Returns plain floats
    ``difference``, ``ci_low``, ``ci_high`` (the ``alpha/2`` quantiles) and ``by_run`` (a list).
    """
    delta, weight = np.asarray(delta, float), np.asarray(weight, float)
    by_run = delta.sum(axis=1) / weight.sum()
    idx = np.random.default_rng(seed).integers(0, weight.size, size=(n_boot, weight.size))
    boot = delta[:, idx].sum(axis=2).mean(axis=0) / weight[idx].sum(axis=1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"difference": float(by_run.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "by_run": [float(v) for v in by_run]}


def shuffle_within(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(N)`` that moves every index only within its stratum.

    strata: (N,) integer labels. ``y[shuffle_within(z, rng)]`` is y shuffled
    inside each level of z: the null of "y carries nothing about x beyond z".
    """
    home = np.argsort(strata, kind="stable")  # positions grouped by stratum
    r = rng.permutation(strata.size)
    drawn = r[np.argsort(strata[r], kind="stable")]  # the same groups, each in random order
    perm = np.empty_like(home)
    perm[home] = drawn
    return perm


def conditional_permutation_test(x, y, z, n_permutations: int = 200, estimator: str = "plugin",
                                 seed: int = 0) -> dict:
    """Is I(X;Y|Z) larger than chance? Shuffles y within each level of z to build the null.

    x, y, z: (N,) integer codes. Keeping z fixed and y's histogram inside every
    level of z keeps the estimator's floor (which grows with the number of
    strata) in the null, so ``value - null_mean`` is a drift-corrected CMI.
    Returns ``value``, ``null_mean``, ``null_std``, ``p_value`` and
    ``n_strata`` (levels of z), as :func:`permutation_test`.
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    cx, cy, cz = prepare_codes(estimator, x=x, y=y, z=z)
    value = cmi_dense(cx, cy, cz, estimator)
    rng = np.random.default_rng(seed)
    null = np.array([cmi_dense(cx, (cy[0][shuffle_within(cz[0], rng)], cy[1]), cz, estimator)
                     for _ in range(n_permutations)])
    return {**null_summary(value, null), "n_strata": int(np.unique(cz[0]).size)}


def conditional_bootstrap_ci(x, y, z, n_boot: int = 200, alpha: float = 0.05, estimator: str = "plugin",
                             seed: int = 0, method: str = "auto") -> dict:
    """(1 - alpha) bootstrap CI for I(X;Y|Z) in bits, resampling triples; ``method`` as in :func:`bootstrap_ci`."""
    method = _check_interval(n_boot, alpha, method, estimator)
    cx, cy, cz = prepare_codes(estimator, x=x, y=y, z=z)
    value = cmi_dense(cx, cy, cz, estimator)
    n = cx[0].size
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)
        boot[i] = cmi_dense((cx[0][idx], cx[1]), (cy[0][idx], cy[1]), (cz[0][idx], cz[1]), estimator)
    lo, hi = bootstrap_interval(boot, value, alpha, method)
    return {"value": float(value), "ci_low": lo, "ci_high": hi}
