"""Macrostate evaluation: grouping statistics, closure, next-group accuracy, baselines, the metrics block."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ret_toolkit.macro.baselines import (
    Baselines,
    causal_ema,
    causal_window_mean,
    causal_window_stack,
    fit_baselines,
)
from ret_toolkit.macro.closure import closure_gap, next_group_accuracy
from ret_toolkit.macro.evaluate import (
    consistency_difference,
    evaluate_groupings,
    group_occupancy_max,
    masked_segments,
    temporal_consistency,
    token_mi_bits,
)
from ret_toolkit.macro.settings import EvaluationSettings


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- grouping statistics


def test_temporal_consistency_exact():
    res = temporal_consistency([np.array([0, 0, 1, 1, 1]), np.array([2, 2])])
    # pairs: (0,0) (0,1) (1,1) (1,1) | (2,2) -> 4 of 5 equal; runs: [00][111] | [22] -> 7 tokens / 3 runs
    assert res == {"p_same_next": pytest.approx(4 / 5), "mean_run_length": pytest.approx(7 / 3)}
    assert temporal_consistency([[3, 3, 3, 3]]) == {"p_same_next": 1.0, "mean_run_length": 4.0}
    assert temporal_consistency([[0, 1, 0, 1]]) == {"p_same_next": 0.0, "mean_run_length": 1.0}


def test_runs_and_pairs_do_not_cross_sequence_boundaries():
    # Concatenated, these would be one run of 4 tokens; per sequence they are two runs of 2.
    assert temporal_consistency([[5, 5], [5, 5]]) == {"p_same_next": 1.0, "mean_run_length": 2.0}
    # Concatenated, the boundary pair (1, 1) would count as "same"; it must not.
    assert temporal_consistency([[0, 1], [1, 0]]) == {"p_same_next": 0.0, "mean_run_length": 1.0}
    # Single-token sequences add runs but no pairs.
    assert temporal_consistency([[4], [4], [4, 4]]) == {"p_same_next": 1.0, "mean_run_length": 4 / 3}


def test_temporal_consistency_rejects_no_tokens():
    with pytest.raises(ValueError, match="no tokens"):
        temporal_consistency([])


def test_group_occupancy_max():
    assert group_occupancy_max([np.array([0, 0, 1]), np.array([2])], k=4) == 0.5
    assert group_occupancy_max([np.arange(12)], k=12) == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match=r"\[0, k=3\)"):
        group_occupancy_max([[0, 3]], k=3)


def test_token_mi_zero_for_independent_and_entropy_for_identical():
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, 50, 2000) for _ in range(10)]
    groups = [rng.integers(0, 8, 2000) for _ in range(10)]
    assert abs(token_mi_bits(groups, tokens)) < 0.01
    same = token_mi_bits(tokens, tokens)
    assert same == pytest.approx(math.log2(50), abs=0.01)
    with pytest.raises(ValueError, match="differ in length"):
        token_mi_bits([np.zeros(3, int)], [np.zeros(4, int)])


# ---------------------------------------------------------------- closure


def ar_sequences(dependence: float, n_seq: int = 12, length: int = 250, d: int = 4, m: int = 12, seed: int = 0):
    """z_{t+1} = A z_t + dependence * B micro_t + noise, micro_t i.i.d. Gaussian (T, m)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d))
    a *= 0.9 / np.abs(np.linalg.eigvals(a)).max()
    b = rng.standard_normal((m, d)) / np.sqrt(m)
    zs, micros = [], []
    for _ in range(n_seq):
        micro = rng.standard_normal((length, m))
        noise = 0.3 * rng.standard_normal((length, d))
        z = np.zeros((length, d))
        z[0] = rng.standard_normal(d)
        for t in range(length - 1):
            z[t + 1] = z[t] @ a + dependence * micro[t] @ b + noise[t]
        zs.append(z)
        micros.append(micro)
    return zs, micros


def test_closure_gap_near_zero_for_autonomous_dynamics():
    zs, micros = ar_sequences(dependence=0.0)
    res = closure_gap(zs, micros)
    assert set(res) == {"err_macro", "err_full", "gap"}
    assert 0 < res["err_macro"] < 1
    assert abs(res["gap"]) < 0.05


def test_closure_gap_large_when_future_depends_on_micro():
    zs, micros = ar_sequences(dependence=1.0)
    res = closure_gap(zs, micros)
    assert res["gap"] > 0.3
    assert res["err_full"] < res["err_macro"]
    assert closure_gap(zs, micros) == res  # seeded: same numbers twice


def test_closure_needs_two_sequences():
    zs, micros = ar_sequences(0.0, n_seq=1, length=20)
    with pytest.raises(ValueError, match="at least 2"):
        closure_gap(zs, micros)


def test_next_group_accuracy():
    rng = np.random.default_rng(1)
    k = 4
    micros = [rng.standard_normal((200, 6)) for _ in range(10)]
    # A deterministic cycle: the current group alone predicts the next one perfectly.
    cycle = [np.arange(200) % k for _ in micros]
    res = next_group_accuracy(cycle, micros)
    assert res["from_group"] == 1.0
    # The next group is read off the current micro state: the group alone is at chance.
    driven = []
    for micro in micros:
        g = np.zeros(200, int)
        g[1:] = micro[:-1, :k].argmax(axis=1)
        driven.append(g)
    res = next_group_accuracy(driven, micros)
    assert res["from_group"] < 0.4
    assert res["from_group_and_micro"] > 0.8


# ---------------------------------------------------------------- baselines


def test_causal_window_mean_exact():
    h = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    expected = np.array([[1.0, 10.0], [1.5, 15.0], [2.0, 20.0], [3.0, 30.0]])  # w = 3
    np.testing.assert_allclose(causal_window_mean(h, 3), expected)
    np.testing.assert_allclose(causal_window_mean(h, 1), h)
    np.testing.assert_allclose(causal_window_mean(h, 10), np.cumsum(h, 0) / np.arange(1, 5)[:, None])
    with pytest.raises(ValueError, match="w must be >= 1"):
        causal_window_mean(h, 0)


def hidden_sequences(n_seq: int = 8, length: int = 120, dim: int = 24, seed: int = 0, noise: float = 1.0):
    """'Hidden states' (T, dim) per sequence: 5 regimes lasting 20 tokens each, plus per-token noise."""
    rng = np.random.default_rng(seed)
    centres = 2 * rng.standard_normal((5, dim))
    out = []
    for _ in range(n_seq):
        regime = np.repeat(rng.integers(0, 5, length // 20 + 1), 20)[:length]
        out.append((centres[regime] + noise * rng.standard_normal((length, dim))).astype(np.float32))
    return out


def fit_on(seqs, w=4, seed=0, k=5, d=3) -> Baselines:
    return fit_baselines(seqs, k=k, d=d, seed=seed, window=w, micro_dim=8)


def test_baselines_deterministic_with_shapes():
    seqs = hidden_sequences()
    b1, b2 = fit_on(seqs), fit_on(seqs)
    h = seqs[0]
    for name in ("kmeans_raw", "kmeans_pca", "kmeans_window"):
        g = b1.assign(name, h)
        assert g.shape == (len(h),) and g.min() >= 0 and g.max() < 5
        np.testing.assert_array_equal(g, b2.assign(name, h))
        np.testing.assert_array_equal(b1.z(name, h), b2.z(name, h))
    assert b1.z("kmeans_pca", h).shape == (len(h), 3)
    assert b1.z("kmeans_window", h).shape == (len(h), 3)
    assert b1.micro(h).shape == (len(h), 8)
    np.testing.assert_allclose(b1.z("kmeans_pca", h), b1.micro(h)[:, :3])  # nested PCA components
    with pytest.raises(ValueError, match="unknown baseline"):
        b1.assign("kmeans_umap", h)


def test_causal_ema_and_window_stack():
    h = np.arange(8, dtype=float).reshape(4, 2)
    a = 1 - 0.5 ** (1 / 2)
    expected = [h[0]]
    for t in range(1, 4):
        expected.append(expected[-1] + a * (h[t] - expected[-1]))
    np.testing.assert_allclose(causal_ema(h, 2.0), expected)
    np.testing.assert_allclose(causal_ema(h[:2], 1e-9), h[:2])  # tiny half-life: the token itself
    with pytest.raises(ValueError, match="half_life"):
        causal_ema(h, 0)
    st = causal_window_stack(h, 3)
    assert st.shape == (4, 6)
    np.testing.assert_allclose(st[0], [0, 0, 0, 0, 0, 1])       # zeros before the start, oldest first
    np.testing.assert_allclose(st[3], [2, 3, 4, 5, 6, 7])


def test_masked_segments_cut_runs_within_sequences():
    a = [np.arange(5), np.arange(10, 13)]
    mask = [np.array([1, 1, 0, 1, 1], bool), np.array([1, 1, 1], bool)]
    (runs,) = masked_segments(mask, a)
    assert [r.tolist() for r in runs] == [[0, 1], [3, 4], [10, 11, 12]]  # the gap splits; sequences never join


def test_ema_baseline_is_slow_and_window_micro_sees_the_past():
    seqs = hidden_sequences(seed=2, noise=4.0)
    b = fit_on(seqs, w=6)
    raw = temporal_consistency([b.assign("kmeans_raw", h) for h in seqs])
    ema = temporal_consistency([b.assign("ema", h) for h in seqs])
    assert ema["p_same_next"] > raw["p_same_next"]
    h = seqs[0]
    assert b.micro_window(h).shape == (len(h), 8) and b.z("ema", h).shape == (len(h), 3)
    # the window micro of t depends on h_{t-5}: changing it moves micro_window(t) but not micro(t)
    h2 = h.copy()
    h2[10] += 5.0
    assert not np.allclose(b.micro_window(h)[15], b.micro_window(h2)[15])
    np.testing.assert_allclose(b.micro(h)[15], b.micro(h2)[15])


def test_window_baseline_is_smoother():
    seqs = hidden_sequences(seed=2, noise=4.0)  # noisy enough that single tokens flip between groups
    b = fit_on(seqs, w=6)
    raw = temporal_consistency([b.assign("kmeans_raw", h) for h in seqs])
    win = temporal_consistency([b.assign("kmeans_window", h) for h in seqs])
    assert win["p_same_next"] > raw["p_same_next"]


# ---------------------------------------------------------------- the metrics.json block


def test_evaluate_groupings_contract():
    train, held = hidden_sequences(seed=3), hidden_sequences(n_seq=6, seed=4)
    b = fit_on(train)
    rng = np.random.default_rng(5)
    # A stand-in "RET": z = window-mean PCA plus a little noise, groups from its k-means.
    ret_z = [b.z("kmeans_window", h) + 0.01 * rng.standard_normal((len(h), 3)) for h in held]
    ret_groups = [b.assign("kmeans_window", h) for h in held]
    tokens = [rng.integers(0, 30, len(h)) for h in held]
    # the last third of every sequence is "generated"
    masks = [np.arange(len(h)) >= 2 * len(h) // 3 for h in held]
    metrics = evaluate_groupings(ret_groups, ret_z, held, tokens, b,
                                 EvaluationSettings(hidden=16, closure_horizons=(1, 3)), token_mask_per_seq=masks)

    names = {"ret", "kmeans_raw", "kmeans_pca", "kmeans_window", "ema"}
    assert set(metrics) == {"temporal_consistency", "closure_gap", "closure", "closure_window", "token_mi_bits",
                            "group_occupancy_max", "generated"}
    assert set(metrics["temporal_consistency"]) == names
    for v in metrics["temporal_consistency"].values():
        assert set(v) == {"p_same_next", "mean_run_length"}
    assert set(metrics["closure_gap"]) == {"ret", "kmeans_pca", "kmeans_window", "ema"}
    assert set(metrics["closure"]) == names
    assert set(metrics["closure"]["ret"]) == {
        "err_macro", "err_full", "gap", "next_group_acc_from_group", "next_group_acc_from_group_and_micro"
    }
    assert set(metrics["closure_window"]) == {"1", "3"}
    for by_name in metrics["closure_window"].values():
        assert set(by_name) == {"ret", "kmeans_pca", "kmeans_window", "ema"}
    # one macro model per horizon: the window test shares its err_macro with the token test
    assert metrics["closure_window"]["1"]["ret"]["err_macro"] == metrics["closure"]["ret"]["err_macro"]
    gen = metrics["generated"]
    assert gen["n_tokens"] == sum(int(m.sum()) for m in masks) and gen["n_sequences"] == len(held)
    assert set(gen["temporal_consistency"]) == names
    # the generated block counts only the masked tokens: recompute one entry by hand
    assert gen["temporal_consistency"]["ret"] == temporal_consistency([g[m] for g, m in zip(ret_groups, masks)])
    assert set(metrics["token_mi_bits"]) == names
    assert set(metrics["group_occupancy_max"]) == names

    def leaves(x):
        return [v for item in x.values() for v in leaves(item)] if isinstance(x, dict) else [x]

    values = leaves(metrics)
    assert all(type(v) is float and math.isfinite(v) for v in values)
    json.dumps(metrics)
    assert metrics["closure_gap"]["ret"] == metrics["closure"]["ret"]["gap"]
    # The stand-in RET groups are the window baseline's: identical grouping statistics.
    assert metrics["temporal_consistency"]["ret"] == metrics["temporal_consistency"]["kmeans_window"]


def test_evaluate_groupings_rejects_misaligned_inputs():
    held = hidden_sequences(n_seq=3, seed=6)
    b = fit_on(hidden_sequences(seed=7))
    groups = [np.zeros(len(h), int) for h in held]
    z = [np.zeros((len(h), 3)) for h in held]
    tokens = [np.zeros(len(h) - 1, int) for h in held]
    with pytest.raises(ValueError, match="differ in length"):
        evaluate_groupings(groups, z, held, tokens, b)


def test_consistency_difference_finds_a_planted_gap_and_covers_zero_under_the_null():
    rng = np.random.default_rng(0)

    def runs(p_stay, n_runs=3, n_seq=40, T=50):
        stay = rng.random((n_runs, n_seq, T)) < p_stay
        draw = rng.integers(0, 4, (n_runs, n_seq, T))
        g = draw.copy()
        for t in range(1, T):
            g[:, :, t] = np.where(stay[:, :, t], g[:, :, t - 1], draw[:, :, t])
        return [list(r) for r in g]

    # P(same next) = p_stay + (1 - p_stay) / 4: 0.925 vs 0.625, a true difference of 0.3
    planted = [consistency_difference(runs(0.9), runs(0.5), n_boot=300, seed=i) for i in range(20)]
    assert np.mean([d["ci_low"] < 0.3 < d["ci_high"] for d in planted]) >= 0.85  # measured 0.95 over 40 worlds
    assert all(d["ci_low"] > 0.2 for d in planted) and len(planted[0]["by_run"]) == 3
    null = [consistency_difference(runs(0.7), runs(0.7), n_boot=300, seed=i) for i in range(20)]
    assert np.mean([d["ci_low"] < 0 < d["ci_high"] for d in null]) >= 0.85
    slow, fast = runs(0.9), runs(0.5)
    with pytest.raises(ValueError, match="same number"):
        consistency_difference(slow, fast[:2])
    with pytest.raises(ValueError, match="same sequences"):
        consistency_difference(slow, [[s[:-1] for s in r] for r in fast])
