"""Entropy and mutual information of discrete codes, in bits (docs/architecture.md §3.3).

Inputs are 1-D arrays of non-negative integer codes (any integer or bool dtype,
or floats holding whole numbers), one entry per sample. Everything reduces to
histograms: symbols are mapped to dense codes, a joint symbol is the index
``x * n_y + y``, and counts come from one ``np.bincount`` -- no Python loop
over samples, so 10^7 pairs take a fraction of a second.

Estimators (all entropies in bits, N samples, m non-empty bins):

- ``"plugin"``: H = -sum p log2 p of the empirical distribution. Biased low by
  about (m-1) / (2 N ln 2); MI is therefore biased *high* at small N.
- ``"miller_madow"``: plug-in + (m-1) / (2 N ln 2).
- ``"jackknife"``: N H - (N-1) mean_i H_{-i}, with the leave-one-out entropies
  H_{-i} computed in closed form from the counts (see :func:`entropy_from_counts`).

MI, conditional MI and normalised MI are sums of entropies, each term with the
same estimator, so bias-corrected values can be slightly negative; that is the
honest estimate and is not clipped.
"""

from __future__ import annotations

import numpy as np

ESTIMATORS = ("plugin", "miller_madow", "jackknife")

_LN2 = float(np.log(2.0))


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def as_codes(a, name: str = "x") -> np.ndarray:
    """Validate one array of codes and return it as int64 of shape (N,) (no copy when already int64).

    Raises ValueError for anything that is not a non-empty 1-D array of
    non-negative whole numbers (NaN, fractions, negatives, strings...).
    """
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer codes, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: information estimates need at least one sample")
    kind = arr.dtype.kind
    if kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values; codes must be non-negative integers")
        frac = arr != np.floor(arr)
        if frac.any():
            raise ValueError(
                f"{name} has non-integer values (e.g. {arr[np.argmax(frac)]!r}); codes must be non-negative integers"
            )
    elif kind not in "iub":
        raise ValueError(f"{name} must hold non-negative integer codes, got dtype {arr.dtype}")
    if kind != "b":
        low = arr.min()
        if low < 0:
            raise ValueError(f"{name} has negative codes (min {low}); codes must be non-negative integers")
    return arr.astype(np.int64, copy=False)


def _check_lengths(**arrays: np.ndarray) -> None:
    sizes = {name: a.size for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"len({k})={v}" for k, v in sizes.items())
        raise ValueError(f"arrays must have the same length (one entry per sample), got {shown}")


def _dense_limit(n: int) -> int:
    # A bincount of this many bins costs about as much as a pass over the samples;
    # beyond it, np.unique (a sort) is the cheaper way to a compact alphabet.
    return max(4 * n, 1 << 16)


def _densify(codes: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Codes in [0, size) -> codes in [0, size') with size' small enough for a bincount."""
    if size <= _dense_limit(codes.size):
        return codes, size
    uniq, inverse = np.unique(codes, return_inverse=True)
    return inverse.reshape(-1), int(uniq.size)


def _dense(codes: np.ndarray) -> tuple[np.ndarray, int]:
    return _densify(codes, int(codes.max()) + 1)


def combine_codes(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
    """Joint symbol of two dense code arrays, itself dense (so chains of joins never overflow)."""
    (ca, na), (cb, nb) = a, b
    joint = ca * nb
    joint += cb  # in place: one temporary fewer, which matters at 10^7 samples
    return _densify(joint, na * nb)


def _xlog2x(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return c * np.log2(np.where(c > 0, c, 1.0))


def _multiplicities(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct positive cell counts v, and how many cells hold exactly v samples."""
    if counts.max() <= _dense_limit(counts.size):
        mult = np.bincount(counts)
        values = np.flatnonzero(mult)
        cells = mult[values]
    else:
        values, cells = np.unique(counts, return_counts=True)
    keep = values > 0
    return values[keep], cells[keep]


def entropy_of_counts(counts: np.ndarray, estimator: str) -> float:
    """Entropy in bits of a histogram ``counts`` (any shape, non-negative ints) with ``estimator``."""
    # Every term depends on a cell only through its count, so the work (logs included)
    # is over distinct counts -- a few thousand even for a million-cell joint table.
    v, cells = _multiplicities(counts)
    if v.size == 0:
        raise ValueError("counts are all zero: entropy needs at least one sample")
    n = int(np.sum(cells * v))
    s = float(np.sum(cells * _xlog2x(v)))
    h = np.log2(n) - s / n
    if estimator == "miller_madow":
        return float(h + (int(cells.sum()) - 1) / (2.0 * n * _LN2))
    if estimator == "jackknife" and n > 1:
        s_loo = s - _xlog2x(v) + _xlog2x(v - 1)
        h_loo = np.log2(n - 1) - s_loo / (n - 1)
        mean_loo = float(np.sum(cells * v * h_loo)) / n
        return float(n * h - (n - 1) * mean_loo)
    return float(h)  # plug-in (and the jackknife of a single sample, where it is undefined)


def entropy_from_counts(counts, estimator: str = "plugin") -> float:
    """Entropy in bits of a histogram. counts: (B,) non-negative integers (empty bins are ignored).

    The jackknife needs no resampling: removing one sample from a cell that
    holds v samples turns v into v-1 and N into N-1 and changes nothing else,
    so every sample in a cell of count v has the same leave-one-out entropy.
    One value per *distinct* count, weighted by v times the number of such
    cells, gives the exact mean over all N leave-one-out estimates.
    """
    _check_estimator(estimator)
    return entropy_of_counts(as_codes(counts, "counts"), estimator)


def _entropy_dense(code: tuple[np.ndarray, int], estimator: str) -> float:
    codes, size = code
    return entropy_of_counts(np.bincount(codes, minlength=size), estimator)


def mi_terms(x: tuple[np.ndarray, int], y: tuple[np.ndarray, int], estimator: str) -> tuple[float, float, float]:
    """(H(X), H(Y), H(X,Y)) of dense codes, with one pass over the samples for the joint table."""
    (cx, nx), (cy, ny) = x, y
    joint, nxy = combine_codes(x, y)
    counts = np.bincount(joint, minlength=nxy)
    if nxy == nx * ny:  # not re-densified (that always shrinks it), so the index is x * ny + y
        # and the marginals are row/column sums of the small table: no second pass over the samples
        table = counts.reshape(nx, ny)
        cnt_x, cnt_y = table.sum(axis=1), table.sum(axis=0)
    else:
        cnt_x, cnt_y = np.bincount(cx, minlength=nx), np.bincount(cy, minlength=ny)
    return (
        entropy_of_counts(cnt_x, estimator),
        entropy_of_counts(cnt_y, estimator),
        entropy_of_counts(counts, estimator),
    )


def prepare_codes(estimator: str, **arrays) -> list[tuple[np.ndarray, int]]:
    """Validate estimator and arrays; return dense (codes, n_symbols) per array, in order."""
    _check_estimator(estimator)
    codes = {name: as_codes(a, name) for name, a in arrays.items()}
    _check_lengths(**codes)
    return [_dense(c) for c in codes.values()]


def entropy(x, estimator: str = "plugin") -> float:
    """H(X) in bits. x: (N,) non-negative integer codes."""
    (cx,) = prepare_codes(estimator, x=x)
    return _entropy_dense(cx, estimator)


def mutual_information(x, y, estimator: str = "plugin") -> float:
    """I(X;Y) = H(X) + H(Y) - H(X,Y) in bits. x, y: (N,) integer codes, paired by index.

    With ``estimator="plugin"`` this equals
    ``sklearn.metrics.mutual_info_score(x, y) / ln 2``.
    """
    cx, cy = prepare_codes(estimator, x=x, y=y)
    hx, hy, hxy = mi_terms(cx, cy, estimator)
    return float(hx + hy - hxy)


def conditional_mutual_information(x, y, z, estimator: str = "plugin") -> float:
    """I(X;Y|Z) = H(X,Z) + H(Y,Z) - H(X,Y,Z) - H(Z) in bits. x, y, z: (N,) integer codes."""
    return cmi_dense(*prepare_codes(estimator, x=x, y=y, z=z), estimator)


def cmi_dense(cx: tuple[np.ndarray, int], cy: tuple[np.ndarray, int], cz: tuple[np.ndarray, int],
              estimator: str) -> float:
    """I(X;Y|Z) in bits of dense codes (:func:`prepare_codes` output)."""
    xz = combine_codes(cx, cz)
    return float(
        _entropy_dense(xz, estimator)
        + _entropy_dense(combine_codes(cy, cz), estimator)
        - _entropy_dense(combine_codes(xz, cy), estimator)
        - _entropy_dense(cz, estimator)
    )


def normalized_mutual_information(x, y, estimator: str = "plugin") -> float:
    """I(X;Y) / sqrt(H(X) H(Y)), dimensionless; 0 when either entropy is 0 (a constant carries no information).

    Plug-in values lie in [0, 1]; bias-corrected ones can stray slightly outside.
    """
    cx, cy = prepare_codes(estimator, x=x, y=y)
    hx, hy, hxy = mi_terms(cx, cy, estimator)
    if hx <= 0.0 or hy <= 0.0:
        return 0.0
    return float((hx + hy - hxy) / np.sqrt(hx * hy))
