"""Known-answer tests for what a macrostate tells beyond the current token (ret_toolkit.macro.beyond_token)."""

import numpy as np
import pytest

from ret_toolkit.macro.beyond_token import (
    future_triples,
    heldout_gain,
    information_row,
    label_triples,
    paired_difference,
)


def planted(n_seq: int, length: int, seed: int):
    """Sequences from a slow hidden state M in {0, 1} (switches with p 0.05 a token). Tokens 0-5 are emitted
    in both states alike; tokens 6-9 only in state 0, 10-13 only in state 1, so the token now does not always
    say M, and M says which tokens come."""
    rng = np.random.default_rng(seed)
    states, tokens = [], []
    for _ in range(n_seq):
        m = np.empty(length, np.int64)
        m[0] = rng.integers(2)
        for t in range(1, length):
            m[t] = 1 - m[t - 1] if rng.random() < 0.05 else m[t - 1]
        shared = rng.random(length) < 0.6
        own = 6 + 4 * m + rng.integers(0, 4, length)
        tokens.append(np.where(shared, rng.integers(0, 6, length), own))
        states.append(m)
    return states, tokens


def split(*per_seq, n_fit):
    return [a[:n_fit] for a in per_seq], [a[n_fit:] for a in per_seq]


def test_future_triples_pair_each_token_with_the_one_tau_ahead_inside_the_mask():
    g = [np.array([0, 1, 2, 3, 4]), np.array([5, 6])]
    x = [np.array([10, 11, 12, 13, 14]), np.array([15, 16])]
    tr = future_triples(g, x, 2)
    assert tr.g.tolist() == [0, 1, 2] and tr.x.tolist() == [10, 11, 12] and tr.y.tolist() == [12, 13, 14]
    assert tr.seq.tolist() == [0, 0, 0]  # the second sequence is too short for tau 2
    masked = future_triples(g, x, 1, [np.array([0, 1, 1, 1, 0], bool), np.array([1, 1], bool)])
    assert masked.x.tolist() == [11, 12, 15] and masked.y.tolist() == [12, 13, 16] and masked.seq.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="differ in length"):
        future_triples(g, [np.arange(5), np.arange(3)], 1)
    with pytest.raises(ValueError, match="tau"):
        future_triples(g, x, 0)


def test_the_planted_state_carries_the_future_beyond_the_token_and_random_groups_do_not():
    states, tokens = planted(160, 60, seed=0)
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 2, len(t)) for t in tokens]
    token_only = [t % 3 for t in tokens]  # a function of the token now: re-encodes it
    (fs, ft, fn, fo), (ss, st, sn, so) = split(states, tokens, noise, token_only, n_fit=80)
    for tau in (1, 4):
        found = information_row(future_triples(fs, ft, tau), future_triples(ss, st, tau), n_permutations=20)
        assert found["heldout_bits"] > 0.05 and found["heldout_p_value"] <= 1 / 21 + 1e-9
        assert found["cmi_excess_bits"] > 0.05 and found["cmi_p_value"] <= 1 / 21 + 1e-9
        null = information_row(future_triples(fn, ft, tau), future_triples(sn, st, tau), n_permutations=20)
        assert null["heldout_bits"] <= 0.005 and null["heldout_p_value"] > 0.05
        assert abs(null["cmi_excess_bits"]) < 0.01
        same = information_row(future_triples(fo, ft, tau), future_triples(so, st, tau), n_permutations=5)
        assert same["heldout_bits"] == 0 and same["cmi_p_value"] == 1.0  # nothing to shuffle within a token
    # A beats B: the paired CI over sequences excludes 0; A against itself is exactly 0
    fit_a, score_a = future_triples(fs, ft, 4), future_triples(ss, st, 4)
    fit_b, score_b = future_triples(fn, ft, 4), future_triples(sn, st, 4)
    a, b = heldout_gain(fit_a, score_a), heldout_gain(fit_b, score_b)
    d = paired_difference([a], [b], score_a.seq, n_boot=500)
    assert d["ci_low"] > 0 and d["difference"] == pytest.approx(a.mean() - b.mean())
    with pytest.raises(ValueError, match="same number"):
        paired_difference([a, a], [b], score_a.seq)
    zero = paired_difference([a, a], [a, a], score_a.seq, n_boot=200)
    assert zero["difference"] == 0 and zero["ci_low"] == 0 and zero["ci_high"] == 0


def test_a_grouping_that_knows_the_prompt_category_carries_semantic_information_and_noise_does_not():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 200)
    # every category draws its tokens from the same 30-token vocabulary: the token never says the category
    tokens = [rng.integers(0, 30, 40) for _ in labels]
    knows = [np.where(rng.random(40) < 0.8, c, rng.integers(0, 4, 40)) for c in labels]
    noise = [rng.integers(0, 4, 40) for _ in labels]
    (fk, fn, ft), (sk, sn, st) = split(knows, noise, tokens, n_fit=100)
    found = information_row(label_triples(fk, ft, labels[:100]), label_triples(sk, st, labels[100:]), n_permutations=20)
    assert found["heldout_bits"] > 0.3 and found["heldout_p_value"] <= 1 / 21 + 1e-9
    null = information_row(label_triples(fn, ft, labels[:100]), label_triples(sn, st, labels[100:]), n_permutations=20)
    assert null["heldout_bits"] <= 0.005 and null["heldout_p_value"] > 0.05
    with pytest.raises(ValueError, match="one label per sequence"):
        label_triples(fk, ft, labels[:3])


def test_heldout_gain_is_zero_where_the_fit_never_saw_the_token():
    fit = future_triples([np.array([0, 1, 0, 1])], [np.array([1, 2, 1, 2])], 1)
    score = future_triples([np.array([0, 1, 0])], [np.array([7, 8, 7])], 1)
    assert np.all(heldout_gain(fit, score) == 0)
    with pytest.raises(ValueError, match="prior"):
        heldout_gain(fit, score, prior=0)


def test_scorecard_rows_and_paired_verdicts_on_a_planted_process():
    from ret_toolkit.macro.scorecard import Sequences, method_rows, paired_rows, verdict

    states, tokens = planted(120, 40, seed=3)
    rng = np.random.default_rng(4)
    gen = [np.arange(len(t)) >= 20 for t in tokens]  # the second half of every sequence is "generated"
    labels = rng.integers(0, 3, len(tokens))
    noise = [rng.integers(0, 2, len(t)) for t in tokens]
    fit = Sequences(tokens[:60], gen[:60], labels[:60])
    score = Sequences(tokens[60:], gen[60:], labels[60:])
    rows = method_rows(states[:60], states[60:], fit, score, k=2, taus=(1, 4), n_permutations=5)
    assert set(rows) == {"all", "generated"}
    assert rows["all"]["p_same_next"] == pytest.approx(0.95, abs=0.02)  # the planted state switches with p 0.05
    for part, row in (("all", "predictive_4_bits"), ("generated", "predictive_1_bits")):
        assert rows[part][row] > 0.01 and rows[part][f"{row}_detail"]["heldout_p_value"] == pytest.approx(1 / 6)
    assert rows["all"]["semantic_bits"] <= 0.005  # the state knows nothing of the (random) labels
    state_runs = [(states[:60], states[60:])] * 2
    noise_runs = [(noise[:60], noise[60:])] * 2
    d = paired_rows(state_runs, noise_runs, fit, score, taus=(1, 4), n_boot=200)
    for part in ("all", "generated"):
        assert verdict("p_same_next", d[part]["p_same_next"]) == "wins"
        assert verdict("predictive_4_bits", d[part]["predictive_4_bits"]) == "wins"
        assert verdict("semantic_bits", d[part]["semantic_bits"]) == "tie"
    # noise tells less about the token than the state does: lower token MI is the good side
    assert verdict("token_mi_bits", d["all"]["token_mi_bits"]) == "loses"
    with pytest.raises(ValueError, match="same number"):
        paired_rows(state_runs, noise_runs[:1], fit, score, taus=(1,), n_boot=10)
    same = paired_rows(state_runs, state_runs, fit, score, taus=(1,), n_boot=100)
    assert all(v["difference"] == 0 and verdict(r, v) == "tie" for r, v in same["all"].items())
