"""Information estimators: exactness against scikit-learn and analytic values, bias, nulls, CIs, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mutual_info_score

from ret_toolkit.info import (
    ESTIMATORS,
    bootstrap_ci,
    conditional_mutual_information,
    entropy,
    entropy_from_counts,
    mutual_information,
    normalized_mutual_information,
    permutation_test,
)

SYMBOLS = 16


def copy_source(n: int, p: float, seed: int, symbols: int = SYMBOLS) -> tuple[np.ndarray, np.ndarray]:
    """x uniform over `symbols`; y = x with probability p, else an independent uniform draw."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, symbols, n)
    y = np.where(rng.random(n) < p, x, rng.integers(0, symbols, n))
    return x, y


def copy_source_mi(p: float, symbols: int = SYMBOLS) -> float:
    """Analytic I(X;Y) of copy_source: H(Y) - H(Y|X), Y uniform."""
    off = (1 - p) / symbols
    row = np.array([p + off] + [off] * (symbols - 1))
    return float(np.log2(symbols) + np.sum(row * np.log2(row)))


@pytest.mark.parametrize("seed", range(5))
def test_plugin_mi_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 5000))
    x = rng.integers(0, int(rng.integers(2, 40)), n)
    y = (x * int(rng.integers(1, 5)) + rng.integers(0, 7, n)) % int(rng.integers(2, 30))
    assert mutual_information(x, y) == pytest.approx(mutual_info_score(x, y) / np.log(2), abs=1e-9)


def test_plugin_mi_equals_sklearn_on_sparse_large_codes():
    # Codes far above N take the np.unique path instead of a direct bincount.
    rng = np.random.default_rng(7)
    x = rng.integers(0, 10**12, 3000) // 10**9  # ~1000 distinct, sparse
    y = rng.integers(0, 50, 3000) * 10**9 + x % 3
    assert mutual_information(x, y) == pytest.approx(mutual_info_score(x, y) / np.log(2), abs=1e-9)


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_entropy_of_uniform_is_k_bits(k):
    x = np.tile(np.arange(2**k), 5)
    assert entropy(x) == pytest.approx(k, abs=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mi_with_itself_is_entropy(estimator):
    x, _ = copy_source(2000, 0.0, seed=1)
    assert mutual_information(x, x, estimator) == pytest.approx(entropy(x, estimator), abs=1e-9)


def test_input_dtypes_agree():
    x, y = copy_source(500, 0.5, seed=2)
    ref = mutual_information(x, y)
    assert mutual_information(x.astype(np.uint8), y.astype(np.int16)) == pytest.approx(ref, abs=1e-12)
    assert mutual_information(x.astype(float), list(y)) == pytest.approx(ref, abs=1e-12)
    assert entropy(np.array([True, False, True, False])) == pytest.approx(1.0)
    assert isinstance(mutual_information(x, y), float)


def test_jackknife_matches_explicit_leave_one_out():
    """The closed form must equal N H - (N-1) mean_i H_{-i} computed the slow way."""
    x, y = copy_source(120, 0.4, seed=3, symbols=5)
    n = x.size
    loo_h = [entropy(np.delete(x, i)) for i in range(n)]
    assert entropy(x, "jackknife") == pytest.approx(n * entropy(x) - (n - 1) * np.mean(loo_h), abs=1e-9)
    loo_mi = [mutual_information(np.delete(x, i), np.delete(y, i)) for i in range(n)]
    expected = n * mutual_information(x, y) - (n - 1) * np.mean(loo_mi)
    assert mutual_information(x, y, "jackknife") == pytest.approx(expected, abs=1e-9)


def test_miller_madow_formula():
    counts = np.array([7, 0, 3, 1, 9])
    n, m = counts.sum(), 4
    plug = entropy_from_counts(counts)
    assert entropy_from_counts(counts, "miller_madow") == pytest.approx(plug + (m - 1) / (2 * n * np.log(2)))
    x = np.repeat(np.arange(5), counts)
    assert entropy(x, "miller_madow") == pytest.approx(entropy_from_counts(counts, "miller_madow"))


def test_conditional_mi_sanity():
    rng = np.random.default_rng(4)
    n = 200_000
    # X and Y are both noisy copies of Z: dependent, but independent given Z.
    z = rng.integers(0, 4, n)
    x = np.where(rng.random(n) < 0.8, z, rng.integers(0, 4, n))
    y = np.where(rng.random(n) < 0.8, z, rng.integers(0, 4, n))
    assert mutual_information(x, y) > 0.3
    assert abs(conditional_mutual_information(x, y, z, "miller_madow")) < 0.002
    # XOR: X and Y are independent, but given Z = X xor Y each determines the other.
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    c = a ^ b
    assert mutual_information(a, b) < 0.001
    assert conditional_mutual_information(a, b, c) == pytest.approx(1.0, abs=0.001)
    # Conditioning on a constant changes nothing.
    assert conditional_mutual_information(x, y, np.zeros(n, int)) == pytest.approx(mutual_information(x, y))


def test_normalized_mi():
    x, y = copy_source(5000, 0.6, seed=5)
    expected = mutual_information(x, y) / np.sqrt(entropy(x) * entropy(y))
    assert normalized_mutual_information(x, y) == pytest.approx(expected)
    assert normalized_mutual_information(x, x) == pytest.approx(1.0)
    assert normalized_mutual_information(x, np.zeros_like(x)) == 0.0
    assert normalized_mutual_information(np.zeros(10, int), np.zeros(10, int), "jackknife") == 0.0


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_miller_madow_within_002_bits_at_1e5(p):
    x, y = copy_source(100_000, p, seed=6)
    assert abs(mutual_information(x, y, "miller_madow") - copy_source_mi(p)) < 0.02


def test_bias_corrections_help_at_small_n():
    p, n, seeds = 0.5, 300, range(30)
    truth = copy_source_mi(p)
    est = {e: np.mean([mutual_information(*copy_source(n, p, s), e) for s in seeds]) for e in ESTIMATORS}
    bias = {e: abs(v - truth) for e, v in est.items()}
    # 256 joint cells from 300 samples: the plug-in overshoots by far more than either correction.
    assert est["plugin"] - truth > 0.2
    assert bias["plugin"] > 1.3 * bias["miller_madow"]
    assert bias["plugin"] > 2 * bias["jackknife"]


def test_permutation_p_values_uniform_under_independence():
    rng = np.random.default_rng(8)
    pvals = []
    for rep in range(200):
        x, y = rng.integers(0, 4, 200), rng.integers(0, 5, 200)
        pvals.append(permutation_test(x, y, n_permutations=49, seed=rep)["p_value"])
    pvals = np.array(pvals)
    assert stats.kstest(pvals, "uniform").pvalue > 0.01
    assert 0.4 < pvals.mean() < 0.6
    assert np.mean(pvals <= 0.1) < 0.2


def test_permutation_detects_dependence():
    x, y = copy_source(500, 0.3, seed=9)
    res = permutation_test(x, y, n_permutations=99, estimator="miller_madow")
    assert set(res) == {"value", "null_mean", "null_std", "p_value"}
    assert res["p_value"] == pytest.approx(0.01)
    assert res["value"] > res["null_mean"] + 5 * res["null_std"]
    assert permutation_test(x, y, n_permutations=20, seed=3) == permutation_test(x, y, n_permutations=20, seed=3)


def test_permutation_of_constant_gives_p_one():
    res = permutation_test(np.zeros(50, int), np.arange(50) % 3, n_permutations=10)
    assert res["value"] == 0.0 and res["p_value"] == 1.0


@pytest.mark.parametrize("estimator, method", [("miller_madow", "percentile"), ("plugin", "basic")])
def test_bootstrap_ci_covers_truth_at_large_n(estimator, method):
    """A 95% interval may miss in 1 of 20 data sets, so coverage is checked over ten of them."""
    p = 0.3
    truth = copy_source_mi(p)
    hits = 0
    for seed in range(10):
        x, y = copy_source(100_000, p, seed=seed)
        res = bootstrap_ci(x, y, n_boot=50, estimator=estimator, method=method, seed=seed)
        assert res["ci_low"] < res["value"] < res["ci_high"]
        assert res["ci_high"] - res["ci_low"] < 0.05
        hits += res["ci_low"] < truth < res["ci_high"]
    assert hits >= 8


@pytest.mark.parametrize("estimator", ["miller_madow", "jackknife", "plugin"])
def test_default_bootstrap_ci_of_independent_codes_covers_zero(estimator):
    """Resampling inflates MI; the raw percentile interval of independent codes misses 0, the default does not."""
    hits, percentile_hits = 0, 0
    for seed in range(10):
        x, y = copy_source(2000, 0.0, seed=seed)
        res = bootstrap_ci(x, y, n_boot=100, estimator=estimator, seed=seed)
        if estimator != "plugin":  # the plug-in value itself is biased; its "basic" interval is not centred on it
            assert res["ci_low"] < res["value"] < res["ci_high"]
        hits += res["ci_low"] < 0.0 < res["ci_high"]
        raw = bootstrap_ci(x, y, n_boot=100, estimator=estimator, seed=seed, method="percentile")
        percentile_hits += raw["ci_low"] < 0.0
    assert hits >= 8
    assert percentile_hits <= 2  # what the correction is for


def test_bootstrap_deterministic_and_plain_floats():
    x, y = copy_source(300, 0.5, seed=11)
    res = bootstrap_ci(x, y, n_boot=50, seed=1)
    assert res == bootstrap_ci(x, y, n_boot=50, seed=1)
    assert set(res) == {"value", "ci_low", "ci_high"} and all(type(v) is float for v in res.values())


def _msg(exc_info) -> str:
    return str(exc_info.value)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: mutual_information([0, 1, 2], [0, 1]), "same length"),
        (lambda: conditional_mutual_information([0, 1], [0, 1], [0, 1, 1]), "same length"),
        (lambda: entropy([0, -1, 2]), "negative"),
        (lambda: mutual_information([0, 1], [0.0, 1.5]), "non-integer"),
        (lambda: entropy(np.array([0.0, np.nan])), "NaN"),
        (lambda: entropy([]), "empty"),
        (lambda: mutual_information(np.array([], int), np.array([], int)), "empty"),
        (lambda: entropy(["a", "b"]), "integer codes"),
        (lambda: entropy(np.zeros((3, 2), int)), "1-D"),
        (lambda: entropy([0, 1], estimator="shrinkage"), "unknown estimator"),
        (lambda: mutual_information([0, 1], [0, 1], estimator="MM"), "unknown estimator"),
        (lambda: entropy_from_counts([0, 0]), "all zero"),
        (lambda: permutation_test([0, 1], [1, 0], n_permutations=0), "n_permutations"),
        (lambda: bootstrap_ci([0, 1], [1, 0], alpha=1.5), "alpha"),
    ],
)
def test_errors_are_clear(call, words):
    with pytest.raises(ValueError) as exc_info:
        call()
    assert words in _msg(exc_info)
