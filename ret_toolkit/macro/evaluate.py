"""Held-out evaluation of macrostate groupings (docs/architecture.md §3.1).

Every input is per sequence: a list with one numpy array per held-out
sequence, the arrays of one sequence sharing their length T_s:

- groups: (T_s,) ints in [0, k);
- z: (T_s, d) continuous macrovariable;
- micro: (T_s, m) the micro variable (PCA_64 of the standardised hidden state);
- tokens: (T_s,) token ids.

Here: the grouping statistics, their paired difference between two methods
(:func:`consistency_difference`) and :func:`evaluate_groupings`, which adds the
prediction metrics of :mod:`ret_toolkit.macro.closure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ret_toolkit.info import mutual_information
from ret_toolkit.info.resampling import paired_bootstrap_ratio
from ret_toolkit.macro.baselines import BASELINES, Baselines
from ret_toolkit.macro.closure import (
    as_2d,
    check_aligned,
    closure_errors,
    gap_record,
    next_group_accuracy,
    one_thread,
)
from ret_toolkit.macro.settings import EvaluationSettings

NAMES = ("ret", *BASELINES)
CLOSURE_NAMES = ("ret", "kmeans_pca", "kmeans_window", "ema")


# ---------------------------------------------------------------- grouping statistics


def _groups_list(groups_per_seq: Sequence) -> list[np.ndarray]:
    seqs = [np.asarray(g).reshape(-1) for g in groups_per_seq]
    if not seqs or sum(g.size for g in seqs) == 0:
        raise ValueError("no tokens: pass a non-empty list of per-sequence group arrays")
    return seqs


def temporal_consistency(groups_per_seq: Sequence) -> dict:
    """How long tokens stay in one group.

    Returns ``p_same_next`` = P(group_{t+1} = group_t) over consecutive pairs
    inside sequences, and ``mean_run_length`` = mean length (tokens) of maximal
    constant runs, runs ending at sequence boundaries. Plain floats;
    ``p_same_next`` is NaN when no sequence has two tokens.
    """
    seqs = _groups_list(groups_per_seq)
    tokens = sum(g.size for g in seqs)
    same = sum(int(np.count_nonzero(g[1:] == g[:-1])) for g in seqs)
    pairs = sum(max(g.size - 1, 0) for g in seqs)
    # Each repeated neighbour merges two runs into one, so runs = tokens - same.
    return {
        "p_same_next": same / pairs if pairs else float("nan"),
        "mean_run_length": tokens / (tokens - same),
    }


def token_mi_bits(groups_per_seq: Sequence, tokens_per_seq: Sequence, estimator: str = "miller_madow") -> float:
    """I(group; token id) in bits over all tokens (lower = groups less tied to surface tokens)."""
    groups, tokens = _groups_list(groups_per_seq), _groups_list(tokens_per_seq)
    check_aligned(groups=groups, tokens=tokens)
    return mutual_information(np.concatenate(groups), np.concatenate(tokens), estimator=estimator)


def group_occupancy_max(groups_per_seq: Sequence, k: int) -> float:
    """Largest share of tokens in one group, in [1/k, 1] (1 = everything collapsed into one group)."""
    groups = np.concatenate(_groups_list(groups_per_seq)).astype(np.int64)
    if groups.min() < 0 or groups.max() >= k:
        raise ValueError(f"group ids must lie in [0, k={k}), got range [{groups.min()}, {groups.max()}]")
    return float(np.bincount(groups, minlength=k).max() / groups.size)


def consistency_difference(runs_a: Sequence[Sequence], runs_b: Sequence[Sequence], n_boot: int = 2000,
                           alpha: float = 0.05, seed: int = 0) -> dict:
    """P(same next) of method A minus method B on the same sequences, with a bootstrap CI over sequences.

    runs_a, runs_b: one entry per run (a training seed), each a list of
    per-sequence (T_s,) group arrays over the same sequences; run r of A is
    paired with run r of B. The difference is the mean over runs of
    P_A(r) - P_B(r), pooled over consecutive pairs; a bootstrap resample draws
    sequences with replacement (the same draw for every run and both methods).
    Returns plain floats ``difference``, ``ci_low``, ``ci_high`` and ``by_run``
    (the per-run differences, a list).
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"need the same number (>= 1) of runs for A and B, got {len(runs_a)} and {len(runs_b)}")

    def counts(run):
        seqs = _groups_list(run)
        return np.array([np.count_nonzero(g[1:] == g[:-1]) for g in seqs], float), \
            np.array([max(g.size - 1, 0) for g in seqs], float)

    same_a, same_b, pairs = [], [], None
    for ra, rb in zip(runs_a, runs_b):
        (sa, pa), (sb, pb) = counts(ra), counts(rb)
        if pairs is None:
            pairs = pa
        if not (np.array_equal(pa, pairs) and np.array_equal(pb, pairs)):
            raise ValueError("every run of A and B must cover the same sequences (same lengths)")
        same_a.append(sa)
        same_b.append(sb)
    return paired_bootstrap_ratio(np.array(same_a) - np.array(same_b), pairs, n_boot, alpha, seed)


# ---------------------------------------------------------------- everything at once


def evaluate_groupings(
    ret_groups_per_seq: Sequence,
    ret_z_per_seq: Sequence,
    h_per_seq: Sequence,
    tokens_per_seq: Sequence,
    baselines: Baselines,
    settings: EvaluationSettings | None = None,
    token_mask_per_seq: Sequence | None = None,
) -> dict:
    """RET versus the four baselines on held-out sequences: the held-out block of metrics.json.

    ret_groups_per_seq: (T_s,) RET group ids; ret_z_per_seq: (T_s, d) RET z;
    h_per_seq: (T_s, D) standardised hidden states; tokens_per_seq: (T_s,) token ids;
    token_mask_per_seq: optional (T_s,) bools, the tokens of the ``"generated"``
    block (the store's ``generated`` flags: the answer, without the prompt's
    chat-template boilerplate that every sequence shares).
    Baseline groups and z come from ``baselines`` (same k). Every representation
    is computed on whole sequences; the masked block only restricts which
    tokens (and consecutive pairs of them) are counted.

    ``settings`` (:class:`~ret_toolkit.macro.settings.EvaluationSettings`): ``seed``, the
    next-group ``horizon``, the closure MLPs' ``hidden`` width and ``closure_horizons``;
    ``closure=False`` skips the prediction metrics (``closure*`` keys; a tuning grid only
    needs the grouping statistics).

    Returns (all values plain floats)::

        {"temporal_consistency": {name: {"p_same_next", "mean_run_length"}},   # ret + 4 baselines
         "closure_gap": {"ret", "kmeans_pca", "kmeans_window", "ema"},        # against micro = PCA_64(h_t)
         "closure": {name: {"err_macro", "err_full", "gap",                  # the four above
                            "next_group_acc_from_group", "next_group_acc_from_group_and_micro"},
                     "kmeans_raw": {next-group keys only: its z would be micro itself}},
         "closure_window": {str(tau): {name: {"err_macro", "err_full", "gap"}}},  # micro = PCA_64 of the
                                                                              # whole window, tau tokens ahead
         "token_mi_bits": {name: bits},                                        # Miller-Madow
         "group_occupancy_max": {name: share},
         "generated": {"n_tokens", "n_sequences", "temporal_consistency",     # with a token mask only:
                       "token_mi_bits", "group_occupancy_max"}}               # the same on masked tokens
    """
    s = settings or EvaluationSettings()
    with one_thread():
        return _evaluate(ret_groups_per_seq, ret_z_per_seq, h_per_seq, tokens_per_seq, baselines, s.horizon, s.hidden,
                         s.seed, token_mask_per_seq, tuple(s.closure_horizons), s.closure)


def masked_segments(mask_per_seq: Sequence, *per_seq: Sequence) -> list[list[np.ndarray]]:
    """Cut per-sequence arrays into the maximal runs where the mask is True (each run becomes a sequence).

    Returns one list per ``per_seq`` argument, aligned run by run; runs never
    join across sequences, so consecutive pairs inside a run were consecutive
    tokens of one sequence.
    """
    out: list[list[np.ndarray]] = [[] for _ in per_seq]
    for s, mask in enumerate(mask_per_seq):
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        for lo, hi in zip(edges[::2], edges[1::2]):
            for lst, arrays in zip(out, per_seq):
                lst.append(np.asarray(arrays[s])[lo:hi])
    return out


def _grouping_stats(groups: dict[str, list], tokens: Sequence, k: int) -> dict:
    return {
        "temporal_consistency": {name: temporal_consistency(groups[name]) for name in NAMES},
        "token_mi_bits": {name: token_mi_bits(groups[name], tokens) for name in NAMES},
        "group_occupancy_max": {name: group_occupancy_max(groups[name], k) for name in NAMES},
    }


def _prediction_metrics(groups, ret_z_per_seq, h_seqs, baselines, horizon, hidden, seed, closure_horizons) -> dict:
    """The closure and next-group blocks of :func:`evaluate_groupings`."""
    micro = [baselines.micro(h) for h in h_seqs]
    micro_window = [baselines.micro_window(h) for h in h_seqs]
    zs = {"ret": list(ret_z_per_seq)}
    zs.update({name: [baselines.z(name, h) for h in h_seqs] for name in CLOSURE_NAMES[1:]})
    closure, closure_window = {}, {str(t): {} for t in closure_horizons}
    for name in NAMES:
        nga = next_group_accuracy(groups[name], micro, horizon=horizon, seed=seed)
        entry = {}
        if name in zs:
            for tau in sorted(set(closure_horizons) | {horizon}):
                errs = closure_errors(zs[name], {"token": micro, "window": micro_window}, tau, hidden, seed)
                if tau == horizon:
                    entry = gap_record(errs["macro"], errs["token"])
                if tau in closure_horizons:
                    closure_window[str(tau)][name] = gap_record(errs["macro"], errs["window"])
        entry["next_group_acc_from_group"] = nga["from_group"]
        entry["next_group_acc_from_group_and_micro"] = nga["from_group_and_micro"]
        closure[name] = entry
    return {"closure_gap": {name: closure[name]["gap"] for name in CLOSURE_NAMES}, "closure": closure,
            "closure_window": closure_window}


def _evaluate(ret_groups_per_seq, ret_z_per_seq, h_per_seq, tokens_per_seq, baselines, horizon, hidden, seed,
              mask_per_seq, closure_horizons, with_closure=True):
    k = baselines.k
    h_seqs = as_2d(h_per_seq, "h")
    check_aligned(groups=list(ret_groups_per_seq), z=list(ret_z_per_seq), h=h_seqs, tokens=list(tokens_per_seq))
    groups = {"ret": [np.asarray(g, dtype=np.int64) for g in ret_groups_per_seq]}
    groups.update({name: [baselines.assign(name, h) for h in h_seqs] for name in BASELINES})
    out = _grouping_stats(groups, tokens_per_seq, k)
    if with_closure:
        out.update(_prediction_metrics(groups, ret_z_per_seq, h_seqs, baselines, horizon, hidden, seed,
                                       closure_horizons))
    if mask_per_seq is not None:
        check_aligned(groups=groups["ret"], mask=[np.asarray(m).reshape(-1) for m in mask_per_seq])
        names = list(groups)
        cut = masked_segments(mask_per_seq, tokens_per_seq, *(groups[n] for n in names))
        if cut[0]:
            sub = dict(zip(names, cut[1:]))
            out["generated"] = {"n_tokens": float(sum(len(t) for t in cut[0])), "n_sequences": float(len(cut[0])),
                                **_grouping_stats(sub, cut[0], k)}
    return out
