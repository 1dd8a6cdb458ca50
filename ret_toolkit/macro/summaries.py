"""What each macrostate looks like: lifted tokens, example spans, position, transitions.

Works from a trajectory store and the group ids of its tokens (a macrostate
file's ``/group``), one sequence at a time.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from activation_cache.reader import TrajectoryStore


def _runs(groups: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of equal values: (group, start, stop)."""
    if len(groups) == 0:
        return []
    cut = np.flatnonzero(np.diff(groups)) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(groups)]])
    return [(int(groups[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def _label(top: list[dict[str, Any]], grp: int) -> str:
    """A short name from the three most lifted tokens that show as text (byte pieces decode to '')."""
    shown = [t["token"].strip() or repr(t["token"]) for t in top if t["token"]]
    return " | ".join(shown[:3]) or f"group {grp}"


def transition_counts(groups_per_seq: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Counts of (group_t, group_{t+1}) pairs within sequences, int64 (K, K)."""
    counts = np.zeros(k * k, np.int64)
    for g in groups_per_seq:
        if len(g) > 1:
            counts += np.bincount(g[:-1].astype(np.int64) * k + g[1:], minlength=k * k)
    return counts.reshape(k, k)


def summarize_groups(
    store: TrajectoryStore,
    groups: np.ndarray,
    k: int,
    sequences: Sequence[int] | None = None,
    n_top: int = 8,
    min_count: int = 3,
    n_examples: int = 3,
    context: int = 8,
) -> dict[str, Any]:
    """Per-group summaries and the transition matrix (JSON-ready).

    groups: int (N,) group of every token row of ``store`` (row-aligned).
    sequences: which sequences to summarise (default all).
    Lift of token v in group g = P(v | g) / P(v); tokens seen fewer than
    ``min_count`` times in g are skipped (their lift is noise).
    """
    seqs = list(range(store.n_sequences)) if sequences is None else list(sequences)
    vocab = 1
    per_seq = []
    for s in seqs:
        a, b = int(store.offsets[s]), int(store.offsets[s + 1])
        tok = store.tokens(s).astype(np.int64)
        per_seq.append((s, tok, groups[a:b].astype(np.int64), store.generated(s)))
        vocab = max(vocab, int(tok.max()) + 1 if len(tok) else 1)
    joint = np.zeros(k * vocab, np.int64)
    pos_sum = np.zeros(k)
    gen = np.zeros(k, np.int64)
    runs: list[list[tuple[int, int, int]]] = [[] for _ in range(k)]  # (length, seq, start)
    for s, tok, g, generated in per_seq:
        joint += np.bincount(g * vocab + tok, minlength=k * vocab)
        rel = np.arange(len(g)) / max(len(g) - 1, 1)
        pos_sum += np.bincount(g, weights=rel, minlength=k)
        gen += np.bincount(g, weights=generated, minlength=k).astype(np.int64)
        for grp, a, b in _runs(g):
            runs[grp].append((b - a, s, a))
    joint = joint.reshape(k, vocab)
    n_g = joint.sum(1)
    n = max(int(n_g.sum()), 1)
    p_tok = joint.sum(0) / n
    decode = store.tokenizer.decode if store.tokenizer is not None else (lambda ids: " ".join(map(str, ids)))
    trans = transition_counts([g for _, _, g, _ in per_seq], k)
    out_groups = []
    for grp in range(k):
        top = []
        if n_g[grp]:
            lift = np.where(joint[grp] >= min_count, (joint[grp] / n_g[grp]) / np.maximum(p_tok, 1e-12), 0.0)
            for v in np.argsort(-lift)[:n_top]:
                if lift[v] > 0:
                    top.append({"token": decode([int(v)]), "lift": float(lift[v]), "count": int(joint[grp, v])})
        examples = []
        used = set()
        for length, s, a in sorted(runs[grp], key=lambda r: (-r[0], r[1], r[2])):
            if s in used:
                continue
            used.add(s)
            tok = next(t for q, t, _, _ in per_seq if q == s)
            b = a + length
            examples.append({"sequence": int(s), "start": int(a),
                             "before": decode(tok[max(0, a - context):a].tolist()),
                             "span": decode(tok[a:b].tolist()),
                             "after": decode(tok[b:b + context].tolist())})
            if len(examples) >= n_examples:
                break
        out_groups.append({
            "group": grp,
            "n_tokens": int(n_g[grp]),
            "share": float(n_g[grp] / n),
            "label": _label(top, grp),
            "top_tokens": top,
            "examples": examples,
            "mean_relative_position": float(pos_sum[grp] / n_g[grp]) if n_g[grp] else float("nan"),
            "generated_share": float(gen[grp] / n_g[grp]) if n_g[grp] else float("nan"),
        })
    rows = trans.sum(1, keepdims=True)
    probs = np.divide(trans, rows, out=np.zeros_like(trans, dtype=float), where=rows > 0)
    return {"k": k, "groups": out_groups, "transitions": probs.tolist(), "transition_counts": trans.tolist()}


def trajectory_records(store: TrajectoryStore, groups: np.ndarray, sequences: Sequence[int]) -> list[dict[str, Any]]:
    """Token texts and groups of a few sequences, for trajectory figures."""
    out = []
    ids = store.meta_column("prompt_id") if "prompt_id" in store.meta_fields else None
    for s in sequences:
        a, b = int(store.offsets[s]), int(store.offsets[s + 1])
        out.append({"sequence": int(s), "prompt_id": ids[s] if ids else str(s),
                    "tokens": store.decode_tokens(s), "groups": groups[a:b].astype(int).tolist(),
                    "generated": store.generated(s).astype(bool).tolist()})
    return out
