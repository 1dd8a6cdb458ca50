"""Held-out evaluation of macrostate groupings (docs/architecture.md §3.1).

Every input is per sequence: a list with one numpy array per held-out
sequence, the arrays of one sequence sharing their length T_s:

- groups: (T_s,) ints in [0, k);
- z: (T_s, d) continuous macrovariable;
- micro: (T_s, m) the micro variable (PCA_64 of the standardised hidden state);
- tokens: (T_s,) token ids.

Time-lagged pairs (t, t + horizon) are formed inside each sequence only, and
the prediction metrics fit on one half of the sequences and score on the
other (split by sequence, never by token: neighbouring tokens are too alike
for a token split to be honest).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from ret_toolkit.info import mutual_information
from ret_toolkit.macro.baselines import BASELINES, Baselines

NAMES = ("ret", *BASELINES)
CLOSURE_NAMES = ("ret", "kmeans_pca", "kmeans_window", "ema")
#: horizons (tokens) of the closure test against the whole window
CLOSURE_HORIZONS = (1, 4, 8)


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
    _check_aligned(groups=groups, tokens=tokens)
    return mutual_information(np.concatenate(groups), np.concatenate(tokens), estimator=estimator)


def group_occupancy_max(groups_per_seq: Sequence, k: int) -> float:
    """Largest share of tokens in one group, in [1/k, 1] (1 = everything collapsed into one group)."""
    groups = np.concatenate(_groups_list(groups_per_seq)).astype(np.int64)
    if groups.min() < 0 or groups.max() >= k:
        raise ValueError(f"group ids must lie in [0, k={k}), got range [{groups.min()}, {groups.max()}]")
    return float(np.bincount(groups, minlength=k).max() / groups.size)


# ---------------------------------------------------------------- prediction helpers


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the small fits below on one thread (BLAS, OpenMP and torch), restoring the settings after.

    These problems are far too small to gain from threads, and when the cores
    are busy, spinning OpenMP/BLAS workers from three runtimes (numpy, scikit-
    learn, torch) make them 10x slower (measured: 155 s vs 14 s for
    :func:`evaluate_groupings` on 20k tokens on a loaded 2-core machine).
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(n)


def _check_aligned(**per_seq: list[np.ndarray]) -> None:
    counts = {name: len(v) for name, v in per_seq.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"per-sequence lists differ in number of sequences: {counts}")
    for s, arrays in enumerate(zip(*per_seq.values())):
        lengths = {name: len(a) for name, a in zip(per_seq, arrays)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"sequence {s}: arrays differ in length (tokens): {lengths}")


def _split_sequences(n_seq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded halves of the sequence indices: (fit, score)."""
    if n_seq < 2:
        raise ValueError(f"need at least 2 held-out sequences to split by sequence, got {n_seq}")
    order = np.random.default_rng(seed).permutation(n_seq)
    half = (n_seq + 1) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _lagged(per_seq: list[np.ndarray], idx: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack (x_t, x_{t+horizon}) pairs of the chosen sequences: rows (n_pairs, ...) each."""
    now = [per_seq[i][:-horizon] for i in idx if len(per_seq[i]) > horizon]
    later = [per_seq[i][horizon:] for i in idx if len(per_seq[i]) > horizon]
    if not now:
        raise ValueError(f"no sequence in this split is longer than horizon={horizon}")
    return np.concatenate(now), np.concatenate(later)


def _as_2d(per_seq: Sequence, name: str) -> list[np.ndarray]:
    out = []
    for a in per_seq:
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 2:
            raise ValueError(f"{name} arrays must be (T, dim), got shape {a.shape}")
        out.append(a)
    return out


def _standardizer(x: np.ndarray):
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)  # constant columns carry nothing; leave them at 0
    return lambda a: ((a - mu) / sd).astype(np.float32)


def _validation_rows(per_seq: list[np.ndarray], idx: np.ndarray, horizon: int, seed: int) -> np.ndarray:
    """Boolean mask over the lagged rows of sequences ``idx``: about a fifth of those sequences.

    Whole sequences, for the same reason as the main split: validation rows
    next to training rows would keep early stopping going into overfitting.
    """
    rows = [len(per_seq[i]) - horizon for i in idx if len(per_seq[i]) > horizon]
    seq_of_row = np.repeat(np.arange(len(rows)), rows)
    if len(rows) < 2:  # one sequence: every fifth row is the best that is left
        return np.arange(seq_of_row.size) % 5 == 0
    held = np.random.default_rng(seed).permutation(len(rows))[: max(1, len(rows) // 5)]
    return np.isin(seq_of_row, held)


def _train_mlp(x: np.ndarray, y: np.ndarray, val: np.ndarray, hidden: int, seed: int, init=None,
               lr: float = 1e-2, max_steps: int = 600):
    """One-hidden-layer tanh MLP (rows x -> rows y), full-batch Adam on MSE, early-stopped on rows ``val``.

    Returns the best parameters (W1, b1, W2, b2) as numpy arrays; the starting
    point is itself a candidate, so a warm start can only be kept or improved
    on the validation rows.
    """
    import torch

    rng = np.random.default_rng(seed)
    if init is None:
        b_in, b_hid = 1 / np.sqrt(x.shape[1]), 1 / np.sqrt(hidden)
        init = (
            rng.uniform(-b_in, b_in, (x.shape[1], hidden)),
            np.zeros(hidden),
            rng.uniform(-b_hid, b_hid, (hidden, y.shape[1])),
            np.zeros(y.shape[1]),
        )
    params = [torch.tensor(np.asarray(p, dtype=np.float32), requires_grad=True) for p in init]
    xt, yt = torch.from_numpy(x[~val]), torch.from_numpy(y[~val])
    xv, yv = torch.from_numpy(x[val]), torch.from_numpy(y[val])

    def loss(a, b):
        w1, b1, w2, b2 = params
        return ((torch.tanh(a @ w1 + b1) @ w2 + b2 - b) ** 2).mean()

    opt = torch.optim.Adam(params, lr=lr)
    with torch.no_grad():
        best, best_params = float(loss(xv, yv)), [p.detach().clone() for p in params]
    stale = 0
    for step in range(1, max_steps + 1):
        opt.zero_grad()
        loss(xt, yt).backward()
        opt.step()
        if step % 10:
            continue
        with torch.no_grad():
            v = float(loss(xv, yv))
        if v < best * (1 - 1e-4):
            best, best_params, stale = v, [p.detach().clone() for p in params], 0
        else:
            stale += 1
            if stale >= 5:
                break
    return [p.numpy().astype(np.float64) for p in best_params]


def _mlp_predict(params, x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = params
    return np.tanh(x @ w1 + b1) @ w2 + b2


def _nmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Total squared error over total variance of the target: 0 perfect, 1 = predicting the mean."""
    var = float(target.var(axis=0).mean())
    return float(np.mean((pred - target) ** 2) / var) if var > 0 else float("nan")


# ---------------------------------------------------------------- closure


def closure_gap(
    z_per_seq: Sequence,
    micro_per_seq: Sequence,
    horizon: int = 1,
    hidden: int = 64,
    seed: int = 0,
) -> dict:
    """How much the micro state adds to predicting the macro future: small gap = closed macro dynamics.

    Predicts z_{t+horizon} (T_s, d) from z_t alone ("macro") and from
    [z_t, micro_t] ("full") with the same model: a one-hidden-layer tanh MLP
    of width ``hidden``. Both fit on half of the sequences and are scored on
    the other half by normalised MSE (MSE / variance of the target, so 1 =
    no better than the mean). The full model starts from the trained macro
    model with zero weights on micro and is early-stopped on validation
    sequences, so it uses micro only where that helps there: useless micro
    inputs cost ~nothing instead of adding optimisation noise that would push
    the gap below zero. (It can still dip slightly below zero when what
    helped the validation sequences does not carry over to the scored half.)

    Returns plain floats ``err_macro``, ``err_full`` and
    ``gap = (err_macro - err_full) / err_macro`` (~0: closed; -> 1: the
    macro future is mostly decided by micro detail).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    with _one_thread():
        return _closure_gap(z_per_seq, micro_per_seq, horizon, hidden, seed)


def _closure_gap(z_per_seq, micro_per_seq, horizon: int, hidden: int, seed: int) -> dict:
    errors = _closure_errors(z_per_seq, {"full": micro_per_seq}, horizon, hidden, seed)
    return _gap(errors["macro"], errors["full"])


def _gap(err_macro: float, err_full: float) -> dict:
    gap = (err_macro - err_full) / err_macro if err_macro > 0 else float("nan")
    return {"err_macro": err_macro, "err_full": err_full, "gap": float(gap)}


def _closure_errors(z_per_seq, micros: dict[str, Sequence], horizon: int, hidden: int, seed: int) -> dict[str, float]:
    """NMSE of z_{t+horizon} from z_t alone (``"macro"``) and from [z_t, micro_t] for each named micro variable.

    One macro model serves every micro variable (same split, same seed), so
    their gaps differ only by what the micro variable adds.
    """
    z_seqs = _as_2d(z_per_seq, "z")
    m_seqs = {name: _as_2d(m, name) for name, m in micros.items()}
    _check_aligned(z=z_seqs, **m_seqs)
    fit_idx, score_idx = _split_sequences(len(z_seqs), seed)
    z_fit, y_fit = _lagged(z_seqs, fit_idx, horizon)
    z_score, y_score = _lagged(z_seqs, score_idx, horizon)
    std_z = _standardizer(z_fit)
    # Targets: centred and scaled by one scalar, so every dimension keeps its weight in the NMSE.
    y_mu, y_sd = y_fit.mean(axis=0), float(y_fit.std()) or 1.0
    target = ((y_fit - y_mu) / y_sd).astype(np.float32)

    def predict(params, x):
        return _mlp_predict(params, x) * y_sd + y_mu

    val = _validation_rows(z_seqs, fit_idx, horizon, seed)
    xm_fit, xm_score = std_z(z_fit), std_z(z_score)
    macro = _train_mlp(xm_fit, target, val, hidden, seed)
    errors = {"macro": _nmse(predict(macro, xm_score), y_score)}
    w1, b1, w2, b2 = macro
    for name, seqs in m_seqs.items():
        m_fit, _ = _lagged(seqs, fit_idx, horizon)
        m_score, _ = _lagged(seqs, score_idx, horizon)
        std_m = _standardizer(m_fit)
        xf_fit, xf_score = np.hstack([xm_fit, std_m(m_fit)]), np.hstack([xm_score, std_m(m_score)])
        warm = (np.vstack([w1, np.zeros((m_fit.shape[1], hidden))]), b1, w2, b2)
        full = _train_mlp(xf_fit, target, val, hidden, seed, init=warm)
        errors[name] = _nmse(predict(full, xf_score), y_score)
    return errors


def _accuracy(x_fit, y_fit, x_score, y_score) -> float:
    if np.unique(y_fit).size == 1:  # one class only: the classifier can only predict it
        return float(np.mean(y_score == y_fit[0]))
    with _one_thread():
        clf = LogisticRegression(max_iter=1000).fit(x_fit, y_fit)
        return float(np.mean(clf.predict(x_score) == y_score))


def next_group_accuracy(groups_per_seq: Sequence, micro_per_seq: Sequence, horizon: int = 1, seed: int = 0) -> dict:
    """Accuracy of predicting group_{t+horizon} from group_t vs from [group_t, micro_t].

    Multinomial logistic regression on a one-hot group (plus standardised
    micro), fit on half of the sequences, scored on the other half. Returns
    plain floats ``from_group`` and ``from_group_and_micro``; a large
    difference means the group sequence is not closed.
    """
    g_seqs = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups_per_seq]
    m_seqs = _as_2d(micro_per_seq, "micro")
    _check_aligned(groups=g_seqs, micro=m_seqs)
    fit_idx, score_idx = _split_sequences(len(g_seqs), seed)
    g_fit, next_fit = _lagged(g_seqs, fit_idx, horizon)
    g_score, next_score = _lagged(g_seqs, score_idx, horizon)
    m_fit, _ = _lagged(m_seqs, fit_idx, horizon)
    m_score, _ = _lagged(m_seqs, score_idx, horizon)

    eye = np.eye(int(max(g.max() for g in g_seqs if g.size)) + 1, dtype=np.float32)
    oh_fit, oh_score = eye[g_fit], eye[g_score]
    std_m = _standardizer(m_fit)
    return {
        "from_group": _accuracy(oh_fit, next_fit, oh_score, next_score),
        "from_group_and_micro": _accuracy(
            np.hstack([oh_fit, std_m(m_fit)]), next_fit, np.hstack([oh_score, std_m(m_score)]), next_score
        ),
    }


# ---------------------------------------------------------------- everything at once


def evaluate_groupings(
    ret_groups_per_seq: Sequence,
    ret_z_per_seq: Sequence,
    h_per_seq: Sequence,
    tokens_per_seq: Sequence,
    baselines: Baselines,
    horizon: int = 1,
    hidden: int = 64,
    seed: int = 0,
    token_mask_per_seq: Sequence | None = None,
    closure_horizons: Sequence[int] = CLOSURE_HORIZONS,
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
    with _one_thread():
        return _evaluate(ret_groups_per_seq, ret_z_per_seq, h_per_seq, tokens_per_seq, baselines, horizon, hidden,
                         seed, token_mask_per_seq, tuple(closure_horizons))


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


def _evaluate(ret_groups_per_seq, ret_z_per_seq, h_per_seq, tokens_per_seq, baselines, horizon, hidden, seed,
              mask_per_seq, closure_horizons):
    k = baselines.k
    h_seqs = _as_2d(h_per_seq, "h")
    _check_aligned(groups=list(ret_groups_per_seq), z=list(ret_z_per_seq), h=h_seqs, tokens=list(tokens_per_seq))
    micro = [baselines.micro(h) for h in h_seqs]
    micro_window = [baselines.micro_window(h) for h in h_seqs]
    groups = {"ret": [np.asarray(g, dtype=np.int64) for g in ret_groups_per_seq]}
    groups.update({name: [baselines.assign(name, h) for h in h_seqs] for name in BASELINES})
    zs = {"ret": list(ret_z_per_seq)}
    zs.update({name: [baselines.z(name, h) for h in h_seqs] for name in CLOSURE_NAMES[1:]})

    closure, closure_window = {}, {str(t): {} for t in closure_horizons}
    for name in NAMES:
        nga = next_group_accuracy(groups[name], micro, horizon=horizon, seed=seed)
        entry = {}
        if name in zs:
            for tau in sorted(set(closure_horizons) | {horizon}):
                errs = _closure_errors(zs[name], {"token": micro, "window": micro_window}, tau, hidden, seed)
                if tau == horizon:
                    entry = _gap(errs["macro"], errs["token"])
                if tau in closure_horizons:
                    closure_window[str(tau)][name] = _gap(errs["macro"], errs["window"])
        entry["next_group_acc_from_group"] = nga["from_group"]
        entry["next_group_acc_from_group_and_micro"] = nga["from_group_and_micro"]
        closure[name] = entry

    out = {
        **_grouping_stats(groups, tokens_per_seq, k),
        "closure_gap": {name: closure[name]["gap"] for name in CLOSURE_NAMES},
        "closure": closure,
        "closure_window": closure_window,
    }
    if mask_per_seq is not None:
        _check_aligned(groups=groups["ret"], mask=[np.asarray(m).reshape(-1) for m in mask_per_seq])
        names = list(groups)
        cut = masked_segments(mask_per_seq, tokens_per_seq, *(groups[n] for n in names))
        if cut[0]:
            sub = dict(zip(names, cut[1:]))
            out["generated"] = {"n_tokens": float(sum(len(t) for t in cut[0])), "n_sequences": float(len(cut[0])),
                                **_grouping_stats(sub, cut[0], k)}
    return out
