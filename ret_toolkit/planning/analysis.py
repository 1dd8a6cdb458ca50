"""Planning analyses on a trajectory store with VQ probes (docs/architecture.md §3.4).

- **horizon**: nMI(prefix block code; last-layer code at T+τ-1), τ = 1..K — how far
  ahead the computation at the anchor carries information about future states;
  next to it the same MI *given the tokens* that state reads and predicts (T+τ-1
  and T+τ), so that a prefix that merely contains a token the model later copies
  (the goal node, say) does not count as planning;
- **branch awareness** (path-finding): the paired test of MI(prefix code; the
  correct path the model did *not* take) − MI(prefix code; the decoy path)
  (:mod:`ret_toolkit.planning.branch`). A path enters as its first hop after the
  start node, bucketed into ``n_buckets`` classes by node index, so both
  variables have the same small, uniform support. The prefix block ends at the
  first generated position T (the start node), whose state computes the first hop;
- **history**: MI(next-token decision code; code of an earlier block of
  positions at a layer group), as a layer-group x block heatmap.

Every MI comes with its permutation-null level and a bootstrap CI
(:func:`ret_toolkit.info.bootstrap_ci`, Miller–Madow); a conditional MI with
its stratified null (:func:`ret_toolkit.info.conditional_permutation_test`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Sequence

import numpy as np

from activation_cache.reader import TrajectoryStore
from ret_toolkit.info import (
    bootstrap_ci,
    conditional_bootstrap_ci,
    conditional_permutation_test,
    entropy,
    normalized_mutual_information,
    permutation_test,
)
from ret_toolkit.planning.branch import branch_awareness
from ret_toolkit.planning.settings import ProbeSettings
from ret_toolkit.tasks.pathfinding import is_reversed
from ret_toolkit.vq.blocks import BlockSpec
from ret_toolkit.vq.codes import encode_store_blocks
from ret_toolkit.vq.train import train as train_vq

#: the branch test needs this many valid answers per cell of the (prefix code x bucket) table;
#: below it both MIs are mostly estimator floor (an untrained model's 24 answers over 256 cells)
MIN_ANSWERS_PER_CELL = 2


def mi_summary(a: np.ndarray, b: np.ndarray, s: ProbeSettings) -> dict:
    """MI (Miller–Madow, bits) with bootstrap CI and permutation null, and nMI.

    The nMI CI is the MI CI divided by sqrt(H(a) H(b)) of the full data.
    """
    perm = permutation_test(a, b, n_permutations=s.n_permutations, estimator="miller_madow", seed=s.seed)
    ci = bootstrap_ci(a, b, n_boot=s.n_boot, estimator="miller_madow", seed=s.seed)
    norm = float(np.sqrt(max(entropy(a), 1e-12) * max(entropy(b), 1e-12)))
    return {"mi": perm["value"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "null_mean": perm["null_mean"],
            "p_value": perm["p_value"], "nmi": normalized_mutual_information(a, b, estimator="miller_madow"),
            "nmi_ci_low": ci["ci_low"] / norm, "nmi_ci_high": ci["ci_high"] / norm, "n": int(len(a))}


def cmi_summary(a: np.ndarray, b: np.ndarray, z: np.ndarray, s: ProbeSettings) -> dict:
    """I(a; b | z) (Miller–Madow, bits) with its stratified permutation null and bootstrap CI.

    ``cmi_excess`` is the CMI minus the null mean: the estimator's floor, which
    grows with the number of strata, removed.
    """
    perm = conditional_permutation_test(a, b, z, n_permutations=s.n_permutations, estimator="miller_madow",
                                        seed=s.seed)
    ci = conditional_bootstrap_ci(a, b, z, n_boot=s.n_boot, estimator="miller_madow", seed=s.seed)
    return {"cmi": perm["value"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "null_mean": perm["null_mean"],
            "p_value": perm["p_value"], "cmi_excess": perm["value"] - perm["null_mean"],
            "n_strata": perm["n_strata"], "n": int(len(a))}


def tokens_around(store: str, anchors: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """(N,) one code per anchor row (seq, T) for the token ids at T + each offset.

    A position past the end of its sequence reads as its own symbol, so the
    code is defined for every row.
    """
    with TrajectoryStore(store) as st:
        seqs = {int(q): st.tokens(int(q)) for q in np.unique(anchors[:, 0])}
    cols = []
    for off in offsets:
        cols.append(np.array([int(seqs[int(q)][t + off]) + 1 if 0 <= t + off < len(seqs[int(q)]) else 0
                              for q, t in anchors]))
    return np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)[1].reshape(-1)


def probe(store: str, block: BlockSpec, s: ProbeSettings, align_with: Sequence[BlockSpec] = (), **data):
    """A VQ probe of ``block`` sized by ``s``, fitted without files (``ret_toolkit.vq.train(checkpoint=False)``);
    ``data``: the other :class:`~ret_toolkit.vq.datamodule.BlockDataModule` arguments (``anchor``...)."""
    return train_vq(store, block, data={"align_with": list(align_with), "batch_size": s.batch_size, **data},
                    model={"num_codes": s.num_codes, "dim": s.dim, "depth": s.depth}, max_epochs=s.epochs,
                    seed=s.seed, checkpoint=False).module


def fit_everywhere(store: str, block: BlockSpec, s: ProbeSettings):
    """A VQ probe trained on ``block`` at (a strided subset of) every position of the store."""
    with TrajectoryStore(store) as st:
        stride = max(1, -(-st.n_tokens // s.max_train_blocks))
    return probe(store, block, s, anchor="all", anchor_stride=stride)


def _fitting_tau(store: str, anchor: str, prefix: BlockSpec, max_tau: int) -> int:
    """Largest τ <= max_tau for which some anchor has the prefix and T+τ-1 inside its sequence."""
    from ret_toolkit.vq.blocks import block_anchors

    with TrajectoryStore(store) as st:
        for tau in range(max_tau, 0, -1):
            if len(block_anchors(st, [prefix, BlockSpec("all", tau - 1, tau)], anchor)):
                return tau
    return 0


def horizon_curve(store: str, s: ProbeSettings, anchor: str = "prompt_end", anchor_stride: int = 1) -> dict:
    """nMI(prefix code; last-layer code at T+τ-1) for τ = 1..K on anchors where every τ fits.

    Each row of ``curve`` also holds ``given_tokens``: the same MI conditioned on
    the token ids at T+τ-1 and T+τ (:func:`cmi_summary`), which removes what the
    state at T+τ-1 shares with the prefix only through the token it reads or
    predicts (copying).
    """
    with TrajectoryStore(store) as st:
        last = str(st.n_model_layers - 1)
    prefix = BlockSpec(layers=s.prefix_layers, start=-s.prefix_positions, stop=0)
    K = _fitting_tau(store, anchor, prefix, s.max_tau)
    if K == 0:
        raise ValueError(f"{store}: no anchor ({anchor}) has the prefix block and a token after it")
    ahead = [BlockSpec(layers=last, start=tau - 1, stop=tau) for tau in range(1, K + 1)]
    vq_prefix = probe(store, prefix, s, align_with=ahead, anchor=anchor, anchor_stride=anchor_stride)
    vq_token = fit_everywhere(store, BlockSpec(layers=last, start=0, stop=1), s)
    align = [prefix, *ahead]
    c_prefix, anchors = encode_store_blocks(vq_prefix, store, prefix, anchor, anchor_stride, align, progress=False)
    rows = []
    for tau, block in enumerate(ahead, start=1):
        c_tau, _ = encode_store_blocks(vq_token, store, block, anchor, anchor_stride, align, progress=False)
        given = tokens_around(store, anchors, (tau - 1, tau))  # the token the state reads and the one it predicts
        rows.append({"tau": tau, **mi_summary(c_prefix, c_tau, s), "given_tokens": cmi_summary(c_prefix, c_tau, given, s)})
    return {"anchor": anchor, "n_anchors": int(len(anchors)), "prefix_block": asdict(prefix), "curve": rows,
            "health": {"prefix": vq_prefix.health_history[-1], "token": vq_token.health_history[-1]}}


def path_variables(store: str, anchors: np.ndarray, n_buckets: int) -> dict[str, np.ndarray]:
    """Per anchor row: the model's choice (1, 2 or 0 = invalid) and the bucketed first hops
    of the unused correct path and of the decoy. For reversed answers (goal -> start) the
    paths are read backwards: the "first hop" is the goal's predecessor, the decoy's the
    node before its dead end."""
    with TrajectoryStore(store) as st:
        meta = {f: st.meta_column(f) for f in ("path1", "path2", "decoy", "start", "goal", "edges")}
        reverse = st.meta_column("reverse") if "reverse" in st.meta_fields else None
        tokens = {int(s): st.decode_tokens(int(s)) for s in np.unique(anchors[:, 0])}
    choice, unused, decoy = [], [], []
    for s, t in anchors:
        p1, p2, d = (json.loads(meta[k][s]) for k in ("path1", "path2", "decoy"))
        if reverse is not None and is_reversed({"reverse": reverse[s]}):
            p1, p2, d = p1[::-1], p2[::-1], d[::-1]
        out = [w.strip() for w in tokens[int(s)][t:] if w.strip()]
        first = out[1] if len(out) > 1 else None  # out[0] is the start node (the goal when reversed)
        c = 1 if first == p1[1] else 2 if first == p2[1] else 0
        choice.append(c)
        other = p2 if c == 1 else p1
        unused.append(int(other[1][1:]) % n_buckets)
        decoy.append(int(d[1][1:]) % n_buckets)
    return {"choice": np.array(choice), "unused": np.array(unused), "decoy": np.array(decoy)}


def branch_on_store(store: str, s: ProbeSettings) -> dict:
    """The paired branch test (:func:`~ret_toolkit.planning.branch.branch_awareness`) at the end of
    the prompt, over the answers whose first hop is on a correct path.

    The prefix block is positions [T - prefix_positions, T] (T: the first
    generated token, the start node; its state computes the first hop). With
    fewer than :data:`MIN_ANSWERS_PER_CELL` valid answers per table cell the
    test is not run (``paired`` is None and ``note`` says why).
    """
    prefix = BlockSpec(layers=s.prefix_layers, start=-s.prefix_positions, stop=1)
    second = BlockSpec(layers="all", start=0, stop=2)  # the model's start node and first hop exist
    vq = probe(store, prefix, s, align_with=[second], anchor="prompt_end")
    codes, anchors = encode_store_blocks(vq, store, prefix, "prompt_end", 1, [second], progress=False)
    v = path_variables(store, anchors, s.n_buckets)
    ok = v["choice"] > 0
    need = MIN_ANSWERS_PER_CELL * s.num_codes * s.n_buckets
    base = {"n": int(ok.sum()), "n_invalid_first_hop": int((~ok).sum()), "min_answers": need,
            "prefix_block": asdict(prefix), "health": vq.health_history[-1]}
    if ok.sum() < need:
        return {**base, "paired": None,
                "note": f"only {int(ok.sum())} answers start with a correct first hop; the test needs {need} "
                        f"({MIN_ANSWERS_PER_CELL} per cell of {s.num_codes} codes x {s.n_buckets} buckets)"}
    stat = branch_awareness(codes[ok], v["unused"][ok], v["decoy"][ok], n_permutations=s.n_permutations,
                            n_boot=s.n_boot, seed=s.seed)
    return {**base, "paired": stat.to_json()}


def layer_groups(n_layers: int, k: int) -> list[str]:
    """Split blocks 0..n_layers-1 into k contiguous groups, as layer specs like ``"0-1"``."""
    edges = np.linspace(0, n_layers, k + 1).round().astype(int)
    return [f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:]) if b > a]


def history_heatmap(store: str, s: ProbeSettings, anchor: str = "all", anchor_stride: int = 1) -> dict:
    """MI(decision code at T; code of positions [T-(j+1)B, T-jB) at layer group g) for every (g, j)."""
    with TrajectoryStore(store) as st:
        n_layers = st.n_model_layers
    last = str(n_layers - 1)
    B, J = s.history_block, s.history_blocks
    decision = BlockSpec(layers=last, start=0, stop=1)
    blocks = [BlockSpec(layers="all", start=-(j + 1) * B, stop=-j * B) for j in range(J)]
    align = [decision, *blocks]
    vq_dec = fit_everywhere(store, decision, s)
    c_dec, anchors = encode_store_blocks(vq_dec, store, decision, anchor, anchor_stride, align, progress=False)
    groups = layer_groups(n_layers, s.history_groups)
    cells = []
    for g in groups:
        vq_g = fit_everywhere(store, BlockSpec(layers=g, start=-B, stop=0), s)
        for j in range(J):
            spec = BlockSpec(layers=g, start=-(j + 1) * B, stop=-j * B)
            c, _ = encode_store_blocks(vq_g, store, spec, anchor, anchor_stride, align, progress=False)
            cells.append({"layers": g, "block": j, "positions": [spec.start, spec.stop], **mi_summary(c_dec, c, s)})
    return {"anchor": anchor, "n_anchors": int(len(anchors)), "groups": groups, "cells": cells}


def task_accuracy(store: str, task, samples: Sequence) -> dict:
    """Score the model's generated continuations in the store with the task's scorer."""
    with TrajectoryStore(store) as st:
        ok = []
        for i in range(st.n_sequences):
            words = [w.strip() for w, g in zip(st.decode_tokens(i), st.generated(i)) if g and w.strip()]
            ok.append(task.score(samples[i], " ".join(words)))
    return {"n": len(ok), "accuracy": float(np.mean(ok)) if ok else float("nan")}
