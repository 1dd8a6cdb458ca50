"""What a macrostate tells beyond the current token: about the tokens to come, and about the prompt.

Two conditional informations, in bits per token, of a grouping ``G`` (macrostate ids):

- **predictive**: ``I(G_t ; X_{t+tau} | X_t)``, the token ``tau`` steps ahead given the token now;
- **semantic**: ``I(G_t ; C | X_t)``, the prompt's category ``C`` (one label per sequence) given the token now.

A grouping that only re-encodes the current token scores 0 on both, however slow it is.
Each is measured two ways:

- **held out** (:func:`heldout_gain`): counts fitted on training sequences, scored on test
  sequences as the mean log-likelihood gain ``log2 p(y | x, g) - log2 p(y | x)``, both
  Dirichlet-smoothed alike (``p(y | x, g)`` backs off to ``p(y | x)``, which backs off to ``p(y)``).
  It is a cross-validated estimate of the conditional information: it cannot gain from
  overfitting (a grouping that carries nothing scores at or below 0), and it is a sum over
  tokens, so the difference between two methods has a paired bootstrap CI over sequences
  (:func:`paired_difference`). The scorecard's rows are this figure.
- **in sample**, with the package's estimator (Miller-Madow) and its null, ``G`` shuffled
  within each level of ``X_t`` (:func:`ret_toolkit.info.conditional_permutation_test`):
  ``excess`` = value minus the null's mean, and a p-value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ret_toolkit.info import conditional_permutation_test
from ret_toolkit.info.resampling import paired_bootstrap_ratio, shuffle_within
from ret_toolkit.macro.closure import check_aligned

__all__ = ["Triples", "future_triples", "heldout_gain", "information_row", "label_triples", "paired_difference"]


@dataclass(frozen=True)
class Triples:
    """Aligned per-token codes: ``g`` group at t, ``x`` token at t (the condition), ``y`` the target,
    ``seq`` the index of the token's sequence in the list it came from. All int64 (N,)."""

    g: np.ndarray
    x: np.ndarray
    y: np.ndarray
    seq: np.ndarray

    def with_groups(self, g: np.ndarray) -> "Triples":
        return Triples(np.asarray(g, np.int64), self.x, self.y, self.seq)


def _per_seq(arrays: Sequence) -> list[np.ndarray]:
    return [np.asarray(a).reshape(-1) for a in arrays]


def _aligned(groups_per_seq: Sequence, tokens_per_seq: Sequence, mask_per_seq: Sequence | None):
    """Per-sequence (groups, tokens, bool mask) arrays, checked to align (no mask: every token)."""
    groups, tokens = _per_seq(groups_per_seq), _per_seq(tokens_per_seq)
    masks = [m.astype(bool) for m in _per_seq(mask_per_seq)] if mask_per_seq is not None \
        else [np.ones(len(t), bool) for t in tokens]
    check_aligned(groups=groups, tokens=tokens, mask=masks)
    return groups, tokens, masks


def future_triples(groups_per_seq: Sequence, tokens_per_seq: Sequence, tau: int,
                   mask_per_seq: Sequence | None = None) -> Triples:
    """(G_t, X_t, X_{t+tau}) for every t with t + tau inside its sequence; with a mask, both t and t + tau
    masked in (e.g. generated tokens only). Per-sequence (T_s,) arrays, aligned."""
    if tau < 1:
        raise ValueError(f"tau must be >= 1 token, got {tau}")
    parts = []
    for s, (g, t, m) in enumerate(zip(*_aligned(groups_per_seq, tokens_per_seq, mask_per_seq))):
        keep = np.flatnonzero(m[:-tau] & m[tau:]) if len(t) > tau else np.zeros(0, np.int64)
        parts.append((g[keep], t[keep], t[keep + tau], np.full(len(keep), s)))
    return _stack(parts)


def label_triples(groups_per_seq: Sequence, tokens_per_seq: Sequence, labels: Sequence,
                  mask_per_seq: Sequence | None = None) -> Triples:
    """(G_t, X_t, C) for every (masked-in) token; ``labels``: one integer label per sequence."""
    aligned = _aligned(groups_per_seq, tokens_per_seq, mask_per_seq)
    if len(labels) != len(aligned[1]):
        raise ValueError(f"one label per sequence: {len(labels)} labels for {len(aligned[1])} sequences")
    parts = []
    for s, (g, t, m, c) in enumerate(zip(*aligned, labels)):
        keep = np.flatnonzero(m)
        parts.append((g[keep], t[keep], np.full(len(keep), int(c)), np.full(len(keep), s)))
    return _stack(parts)


def _stack(parts) -> Triples:
    cols = [np.concatenate([p[i] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
            for i in range(4)]
    return Triples(*cols)


def _counts(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """How often each ``query`` key occurs among ``keys`` (int64 arrays)."""
    uniq, n = np.unique(keys, return_counts=True)
    if not len(uniq):
        return np.zeros(len(query), np.int64)
    pos = np.minimum(np.searchsorted(uniq, query), len(uniq) - 1)
    return np.where(uniq[pos] == query, n[pos], 0)


def heldout_gain(fit: Triples, score: Triples, prior: float = 1.0) -> np.ndarray:
    """Per scored token, ``log2 p(y | x, g) - log2 p(y | x, *)`` in bits, (N_score,) float64, counts from ``fit``.

    ``p(y) = (c(y) + 1) / (N + V)`` over the ``V`` values of y in either set;
    ``p(y | x) = (c(x, y) + prior p(y)) / (c(x) + prior)``;
    ``p(y | x, g) = (c(x, g, y) + prior p(y | x)) / (c(x, g) + prior)``; the reference
    ``p(y | x, *)`` is the same with one group for all (``c(x, *) = c(x)``), smoothed as
    deeply. A grouping constant within each token gains exactly 0, and so does a token
    ``x`` never seen in ``fit``.
    """
    if prior <= 0:
        raise ValueError(f"prior must be > 0, got {prior}")
    # dense codes over both sets, so that keys combine without overflow
    _, x = np.unique(np.concatenate([fit.x, score.x]), return_inverse=True)
    _, y = np.unique(np.concatenate([fit.y, score.y]), return_inverse=True)
    _, g = np.unique(np.concatenate([fit.g, score.g]), return_inverse=True)
    nx, ny, ng = int(x.max(initial=0)) + 1, int(y.max(initial=0)) + 1, int(g.max(initial=0)) + 1
    n = len(fit.x)
    fx, fy, fg = x[:n], y[:n], g[:n]
    sx, sy, sg = x[n:], y[n:], g[n:]
    p_y = (_counts(fy, sy) + 1.0) / (n + ny)
    p_y_x = (_counts(fx * ny + fy, sx * ny + sy) + prior * p_y) / (_counts(fx, sx) + prior)
    xg_f, xg_s = fx * ng + fg, sx * ng + sg
    p_y_xg = (_counts(xg_f * ny + fy, xg_s * ny + sy) + prior * p_y_x) / (_counts(xg_f, xg_s) + prior)
    # the reference smoothed as deeply: p(y | x, g) of a grouping with one group (what a grouping
    # constant within each token also gives), so re-encoding the token gains exactly 0
    p_ref = (_counts(fx * ny + fy, sx * ny + sy) + prior * p_y_x) / (_counts(fx, sx) + prior)
    return np.log2(p_y_xg) - np.log2(p_ref)


def information_row(fit: Triples, score: Triples, n_permutations: int = 20, seed: int = 0,
                    prior: float = 1.0) -> dict:
    """One grouping's figures on ``score`` (plain floats, bits per token).

    ``heldout_bits``: mean :func:`heldout_gain`; ``heldout_null_mean`` / ``heldout_p_value``: the same
    with ``g`` shuffled within each token ``x`` in both sets (``n_permutations`` times; p one-sided, never
    0); ``cmi_bits`` / ``cmi_excess_bits`` / ``cmi_p_value``: the in-sample Miller-Madow
    ``I(G; Y | X)`` on ``score``, minus its conditional-permutation null's mean, and its p-value;
    ``n_tokens``.
    """
    gain = heldout_gain(fit, score, prior)
    value = float(gain.mean()) if len(gain) else float("nan")
    rng = np.random.default_rng(seed)
    null = np.array([heldout_gain(fit.with_groups(fit.g[shuffle_within(fit.x, rng)]),
                                  score.with_groups(score.g[shuffle_within(score.x, rng)]), prior).mean()
                     for _ in range(n_permutations)]) if len(gain) else np.zeros(0)
    cmi = conditional_permutation_test(score.g, score.y, score.x, n_permutations=n_permutations,
                                       estimator="miller_madow", seed=seed)
    return {"heldout_bits": value, "heldout_null_mean": float(null.mean()) if len(null) else float("nan"),
            "heldout_p_value": float((1 + np.sum(null >= value - 1e-12)) / (1 + len(null))),
            "cmi_bits": cmi["value"], "cmi_excess_bits": cmi["value"] - cmi["null_mean"],
            "cmi_p_value": cmi["p_value"], "n_tokens": int(len(gain))}


def paired_difference(values_a: Sequence[np.ndarray], values_b: Sequence[np.ndarray], seq: np.ndarray,
                      n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Mean per-token value of method A minus method B on the same tokens, with a bootstrap CI over sequences.

    ``values_a``, ``values_b``: one (N,) array per run (training seed; run r of A paired with
    run r of B), each value belonging to the token whose sequence is ``seq`` (N,). The
    difference is the mean over runs of mean_A(r) - mean_B(r); a resample draws sequences
    with replacement, the same draw for every run and both methods. Returns plain floats
    ``difference``, ``ci_low``, ``ci_high`` and ``by_run`` (a list).
    """
    if len(values_a) != len(values_b) or not values_a:
        raise ValueError(f"need the same number (>= 1) of runs for A and B, got {len(values_a)} and {len(values_b)}")
    seq = np.asarray(seq, np.int64)
    _, inv = np.unique(seq, return_inverse=True)
    n_seq = int(inv.max(initial=-1)) + 1
    delta = np.array([np.bincount(inv, np.asarray(a, float) - np.asarray(b, float), minlength=n_seq)
                      for a, b in zip(values_a, values_b)])  # (runs, sequences): per-sequence sums
    return paired_bootstrap_ratio(delta, np.bincount(inv, minlength=n_seq).astype(float), n_boot, alpha, seed)
