"""Prediction metrics of a macrostate evaluation: the closure gap and next-group accuracy.

Inputs are per sequence, as in :mod:`ret_toolkit.macro.evaluate`. Time-lagged
pairs (t, t + horizon) are formed inside each sequence only, and every model
fits on one half of the sequences and scores on the other (split by
sequence, never by token: neighbouring tokens are too alike for a token split
to be honest).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

# ---------------------------------------------------------------- prediction helpers


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
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


def check_aligned(**per_seq: list[np.ndarray]) -> None:
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


def as_2d(per_seq: Sequence, name: str) -> list[np.ndarray]:
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
    with one_thread():
        return _closure_gap(z_per_seq, micro_per_seq, horizon, hidden, seed)


def _closure_gap(z_per_seq, micro_per_seq, horizon: int, hidden: int, seed: int) -> dict:
    errors = closure_errors(z_per_seq, {"full": micro_per_seq}, horizon, hidden, seed)
    return gap_record(errors["macro"], errors["full"])


def gap_record(err_macro: float, err_full: float) -> dict:
    gap = (err_macro - err_full) / err_macro if err_macro > 0 else float("nan")
    return {"err_macro": err_macro, "err_full": err_full, "gap": float(gap)}


def closure_errors(z_per_seq, micros: dict[str, Sequence], horizon: int, hidden: int, seed: int) -> dict[str, float]:
    """NMSE of z_{t+horizon} from z_t alone (``"macro"``) and from [z_t, micro_t] for each named micro variable.

    One macro model serves every micro variable (same split, same seed), so
    their gaps differ only by what the micro variable adds.
    """
    z_seqs = as_2d(z_per_seq, "z")
    m_seqs = {name: as_2d(m, name) for name, m in micros.items()}
    check_aligned(z=z_seqs, **m_seqs)
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
    with one_thread():
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
    m_seqs = as_2d(micro_per_seq, "micro")
    check_aligned(groups=g_seqs, micro=m_seqs)
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
