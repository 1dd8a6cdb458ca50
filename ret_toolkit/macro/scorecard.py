"""One scorecard for RET and its baselines: what each grouping carries, and paired differences with CIs.

Every method (RET and each baseline, the same number of macrostates) is scored on the same
test sequences, from its groups there and on the training sequences (where the held-out
information rows fit their counts). Rows, on all tokens and on generated tokens:

- ``p_same_next``, ``mean_run_length``: consistency (higher: slower);
- ``token_mi_bits``: abstraction, I(group; token now), Miller-Madow (lower: more abstract);
- ``predictive_<tau>_bits``: I(G_t; X_{t+tau} | X_t), held out (:mod:`ret_toolkit.macro.beyond_token`);
- ``semantic_bits``: I(G_t; category | X_t), held out.

:func:`method_rows` scores one grouping of one run; :func:`paired_rows` gives method A minus
method B per row, pooled over paired runs (training seeds), with a bootstrap CI that resamples
test sequences; :func:`verdict` reads a difference: A wins a row only when the CI excludes 0
on the row's good side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ret_toolkit.macro.beyond_token import (
    Triples,
    future_triples,
    heldout_gain,
    information_row,
    label_triples,
    paired_difference,
)
from ret_toolkit.macro.evaluate import (
    consistency_difference,
    group_occupancy_max,
    masked_segments,
    temporal_consistency,
    token_mi_bits,
)

__all__ = ["HIGHER_IS_BETTER", "Sequences", "method_rows", "paired_rows", "verdict"]

#: Each row's good side: True where a larger value is better.
HIGHER_IS_BETTER = {"p_same_next": True, "mean_run_length": True, "token_mi_bits": False, "semantic_bits": True}


def _predictive(tau: int) -> str:
    return f"predictive_{tau}_bits"


@dataclass(frozen=True)
class Sequences:
    """One side's sequences: ``tokens`` and ``generated`` (bool) per sequence, (T_s,) each; ``labels`` (S,)
    int, each sequence's prompt category."""

    tokens: list[np.ndarray]
    generated: list[np.ndarray]
    labels: np.ndarray

    def mask(self, part: str) -> list[np.ndarray] | None:
        """The token mask of a part: None for ``"all"``, the generated tokens for ``"generated"``."""
        if part not in ("all", "generated"):
            raise ValueError(f"part must be 'all' or 'generated', got {part!r}")
        return None if part == "all" else [np.asarray(g, bool) for g in self.generated]


def _triples(groups: Sequence, side: Sequences, part: str, row: str) -> Triples:
    if row == "semantic_bits":
        return label_triples(groups, side.tokens, side.labels, side.mask(part))
    return future_triples(groups, side.tokens, int(row.split("_")[1]), side.mask(part))


def _cut(groups: Sequence, side: Sequences, part: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(groups, tokens) per sequence of a part: whole sequences, or their generated runs."""
    if part == "all":
        return [np.asarray(g) for g in groups], list(side.tokens)
    tokens, cut = masked_segments(side.mask(part), side.tokens, groups)
    return cut, tokens


def info_rows(taus: Sequence[int]) -> list[str]:
    return [*(_predictive(t) for t in taus), "semantic_bits"]


def method_rows(fit_groups: Sequence, score_groups: Sequence, fit: Sequences, score: Sequences, k: int,
                taus: Sequence[int] = (1, 4, 16), n_permutations: int = 20, seed: int = 0) -> dict:
    """One grouping of one run: ``{part: {row: value}}`` (plain floats), part ``"all"`` and ``"generated"``.

    fit_groups / score_groups: (T_s,) group ids per training / test sequence. The information rows
    also give, under ``<row>_detail``, :func:`~ret_toolkit.macro.beyond_token.information_row`'s
    nulls and in-sample estimates; ``max_occupancy`` is the largest group's share.
    """
    out = {}
    for part in ("all", "generated"):
        g, t = _cut(score_groups, score, part)
        rows = {**temporal_consistency(g), "token_mi_bits": token_mi_bits(g, t), "max_occupancy": group_occupancy_max(g, k)}
        for row in info_rows(taus):
            detail = information_row(_triples(fit_groups, fit, part, row), _triples(score_groups, score, part, row),
                                     n_permutations=n_permutations, seed=seed)
            rows[row] = detail["heldout_bits"]
            rows[f"{row}_detail"] = detail
        out[part] = rows
    return out


def _statistic_difference(stat: Callable, runs_a: Sequence, runs_b: Sequence, tokens: list[np.ndarray],
                          n_boot: int, alpha: float, seed: int) -> dict:
    """Mean over runs of stat(A) - stat(B) (stat of per-sequence groups and tokens), with a bootstrap CI that
    resamples sequences (the same draw for every run and both methods)."""
    def diff(idx):
        toks = [tokens[i] for i in idx]
        return float(np.mean([stat([a[i] for i in idx], toks) - stat([b[i] for i in idx], toks)
                              for a, b in zip(runs_a, runs_b)]))

    rng = np.random.default_rng(seed)
    n = len(tokens)
    boot = np.array([diff(rng.integers(0, n, n)) for _ in range(n_boot)])
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"difference": diff(np.arange(n)), "ci_low": float(lo), "ci_high": float(hi)}


def paired_rows(runs_a: Sequence[tuple[Sequence, Sequence]], runs_b: Sequence[tuple[Sequence, Sequence]],
                fit: Sequences, score: Sequences, taus: Sequence[int] = (1, 4, 16), n_boot: int = 1000,
                alpha: float = 0.05, seed: int = 0) -> dict:
    """Method A minus method B per row and part, pooled over paired runs, each with its CI.

    runs_a, runs_b: per run (training seed), ``(fit_groups, score_groups)``; run r of A is paired
    with run r of B. P(same next) and the information rows are sums over tokens (or pairs), so
    their CIs resample sequences of per-sequence sums; run length and token MI are recomputed on
    every resample (``n_boot // 4`` of them: they cost a pass each). Returns
    ``{part: {row: {"difference", "ci_low", "ci_high"}}}``.
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"need the same number (>= 1) of runs for A and B, got {len(runs_a)} and {len(runs_b)}")
    out = {}
    for part in ("all", "generated"):
        cut_a = [_cut(s, score, part)[0] for _, s in runs_a]
        cut_b = [_cut(s, score, part)[0] for _, s in runs_b]
        tokens = _cut(runs_a[0][1], score, part)[1]
        rows = {"p_same_next": consistency_difference(cut_a, cut_b, n_boot=n_boot, alpha=alpha, seed=seed)}
        few = max(n_boot // 4, 50)
        rows["mean_run_length"] = _statistic_difference(lambda g, t: temporal_consistency(g)["mean_run_length"],
                                                        cut_a, cut_b, tokens, few, alpha, seed)
        rows["token_mi_bits"] = _statistic_difference(token_mi_bits, cut_a, cut_b, tokens, few, alpha, seed)
        for row in info_rows(taus):
            gains_a, gains_b, seq = [], [], None
            for (fa, sa), (fb, sb) in zip(runs_a, runs_b):
                score_a = _triples(sa, score, part, row)
                gains_a.append(heldout_gain(_triples(fa, fit, part, row), score_a))
                gains_b.append(heldout_gain(_triples(fb, fit, part, row), _triples(sb, score, part, row)))
                seq = score_a.seq
            rows[row] = paired_difference(gains_a, gains_b, seq, n_boot=n_boot, alpha=alpha, seed=seed)
        out[part] = rows
    return out


def verdict(row: str, difference: dict) -> str:
    """``"wins"`` / ``"loses"`` when the CI of A - B excludes 0 on the row's good / bad side, else ``"tie"``."""
    higher = HIGHER_IS_BETTER.get(row, row.startswith("predictive_"))
    lo, hi = difference["ci_low"], difference["ci_high"]
    if lo > 0 or hi < 0:
        return "wins" if (lo > 0) == higher else "loses"
    return "tie"
