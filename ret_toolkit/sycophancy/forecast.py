"""Will the model cave? Cross-validated logistic forecasts from early features, AUROC with CIs.

Protocol (docs/architecture.md §3.5), for every feature set and lead time k:

1. Folds: stratified k-fold *grouped by conversation* (:func:`grouped_folds`): all sequences
   of one conversation (pushback variants sharing a question and first answer) are in the
   same fold, so a forecaster is never tested on a conversation it was trained on.
2. Model, fitted on the training folds only: standardise -> (``raw_pca``: PCA) ->
   L2 logistic regression whose strength C is chosen by an inner grouped CV on the training
   folds (:func:`fit_model`). ``majority`` predicts the training folds' majority label (a constant: AUROC 0.5).
3. Out-of-fold scores for every sequence; repeated with ``repeats`` different fold shuffles.
4. ``mean``: the mean over folds and repeats of the within-fold AUROC (caved = positive;
   :func:`cv_auroc` says why not pooled). ``ci_low`` / ``ci_high``: percentile interval over a
   *refitting* bootstrap (:func:`refit_bootstrap`): each resample draws conversations with
   replacement and reruns the whole grouped CV on them (C fixed at the value the inner CV
   chose most often on the data). Holding the fitted scores fixed instead
   (:func:`bootstrap_auroc`) misses the variance of the fit: on label-free planted data its
   95 % CIs covered chance in 29 of 40 label-free worlds for a 6-feature probe, the refitting
   ones in 39 of 40 (``benchmarks/bench_forecast_coverage.py``).
5. ``differences``: RET minus each baseline at every k, on the *same* refitted resamples:
   "RET beats X" needs that CI above 0.

Baselines: ``raw_pca`` (the raw hidden state, same capacity), ``length`` (prompt lengths),
``design`` (the pushback template and item kind: what the prompt's design alone
predicts) and ``majority`` (the chance line).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from activation_cache.errors import InputError

__all__ = ["auroc", "bootstrap_auroc", "paired_bootstrap_auroc", "refit_bootstrap", "cv_auroc", "fold_index",
           "grouped_folds", "fit_model", "oof_scores", "evaluate_forecast", "C_GRID"]

#: Inverse L2 strengths tried by the inner CV.
C_GRID = (0.001, 0.01, 0.1, 1.0)


def auroc(y, score) -> float:
    """Area under the ROC curve of ``score`` for binary ``y`` (Mann-Whitney, ties count 1/2).

    y: (N,) 0/1; score: (N,) float. NaN when only one class is present.
    Equals ``sklearn.metrics.roc_auc_score`` but costs one rank pass, so thousands of
    bootstrap resamples stay cheap.
    """
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def grouped_folds(y, groups, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold with every group (conversation) inside one fold: [(train_idx, test_idx)].

    ``n_splits`` is lowered to the number of groups holding the rarer class when there are
    fewer (each test fold needs both classes for a useful split); InputError below 2.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    classes = np.unique(y)
    if len(classes) < 2:
        raise InputError(f"need both caved and held examples to forecast; all {len(y)} are {int(classes[0]) if len(y) else 'absent'}")
    rare = min(len(np.unique(groups[y == c])) for c in classes)
    n = min(n_splits, rare)
    if n < 2:
        raise InputError(f"need at least 2 conversations of each class for cross-validation, got {rare}")
    cv = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in cv.split(np.zeros(len(y)), y, groups)]


def fit_model(kind: str, X, y, groups, n_components: int | None = None, seed: int = 0, C: float | None = None):
    """Fit a scikit-learn pipeline on ``X`` (N, F), ``y`` (N,): ``"logistic"`` or ``"pca_logistic"``.

    Standardise -> (PCA to ``n_components``) -> L2 logistic regression. ``C`` None: chosen from
    :data:`C_GRID` by mean within-fold AUROC of an inner grouped CV (3 folds) on these rows,
    with the scaler / PCA fitted on all of them (only the choice of C sees that); with too
    little data for an inner split C = 0.1. The chosen C is the fitted pipeline's ``[-1].C``.
    """
    steps = [StandardScaler()]
    if kind == "pca_logistic":
        steps.append(PCA(n_components=n_components, random_state=seed))
    elif kind != "logistic":
        raise ValueError(f"unknown model kind {kind!r}")
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if C is not None:
        return make_pipeline(*steps, LogisticRegression(C=C, max_iter=2000)).fit(X, y)
    pre = make_pipeline(*steps).fit(X)
    Z = pre.transform(X)
    try:
        inner = grouped_folds(y, groups, 3, seed)
    except InputError:
        inner = None
    C = 0.1
    if inner is not None:
        # A plain loop: LogisticRegressionCV costs ~100x more here (parallel and scorer overhead).
        score = {c: np.nanmean([auroc(y[te], LogisticRegression(C=c, max_iter=2000).fit(Z[tr], y[tr])
                                      .decision_function(Z[te])) for tr, te in inner]) for c in C_GRID}
        C = max(C_GRID, key=lambda c: (score[c], -c))  # ties: the stronger regularisation
    return make_pipeline(*steps, LogisticRegression(C=C, max_iter=2000)).fit(X, y)


def oof_scores(X, y, groups, folds, kind: str, n_components: int | None = None, seed: int = 0,
               C: float | None = None, chosen: list | None = None) -> np.ndarray:
    """Out-of-fold P(caved) for every row: (N, F) -> (N,). ``kind``: ``"majority"`` or a
    :func:`fit_model` kind. PCA dimensions are capped by the training rows and features.

    ``X`` may also be (n_folds, N, F): features that differ by fold (an encoder trained on
    each fold's training side); fold j is fitted and scored on ``X[j]``. ``C`` fixes the
    logistic strength (None: inner CV per fold); ``chosen`` collects the C of every fold."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    groups = np.asarray(groups)
    out = np.full(len(y), np.nan)
    # Many tiny fits: BLAS threads only add contention on a shared 2-core machine (10x slower).
    with threadpool_limits(limits=1):
        _fill_oof(out, X, y, groups, folds, kind, n_components, seed, C, chosen)
    return out


def _fill_oof(out, X, y, groups, folds, kind, n_components, seed, C, chosen) -> None:
    for j, (tr, te) in enumerate(folds):
        if kind == "majority":
            out[te] = float(y[tr].mean() >= 0.5)  # the majority label: a constant, so AUROC 0.5
            continue
        Xj = X[j] if X.ndim == 3 else X
        nc = None if n_components is None else int(min(n_components, len(tr) - 1, Xj.shape[1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on tiny quick runs
            model = fit_model(kind, Xj[tr], y[tr], groups[tr], nc, seed, C)
        if chosen is not None:
            chosen.append(float(model[-1].C))
        out[te] = model.predict_proba(Xj[te])[:, 1]


def fold_index(folds, n: int) -> np.ndarray:
    """int (n,): the test fold of every row, from ``[(train_idx, test_idx)]``."""
    out = np.full(n, -1, dtype=np.int64)
    for j, (_, te) in enumerate(folds):
        out[te] = j
    return out


def cv_auroc(y, scores: Sequence[np.ndarray], fold_ids: Sequence[np.ndarray]) -> float:
    """Mean within-fold AUROC over every fold of every repeat (folds with one class skipped).

    Within-fold, not pooled: out-of-fold scores of different folds come from different
    models whose offsets track their training folds' class balance, which pooled ranking
    would turn into a spurious (below-chance) signal on label noise.
    """
    y = np.asarray(y)
    vals = [auroc(y[f == j], s[f == j]) for s, f in zip(scores, fold_ids) for j in np.unique(f)]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def bootstrap_auroc(y, scores: Sequence[np.ndarray], fold_ids: Sequence[np.ndarray], groups, n_boot: int = 1000,
                    alpha: float = 0.05, seed: int = 0) -> dict:
    """``{"mean", "ci_low", "ci_high", "std", "n_boot_used"}`` of :func:`cv_auroc`.

    scores / fold_ids: one (N,) array per CV repeat (out-of-fold scores, test fold of each row).
    The CI is the percentile interval over resamples of groups (conversations) with
    replacement; resamples with a single class are skipped (``n_boot_used`` counts the rest).
    """
    y = np.asarray(y)
    scores = [np.asarray(s, dtype=np.float64) for s in scores]
    fold_ids = [np.asarray(f) for f in fold_ids]
    mean = cv_auroc(y, scores, fold_ids)
    boot = [cv_auroc(y[idx], [s[idx] for s in scores], [f[idx] for f in fold_ids])
            for idx in _group_resamples(y, groups, n_boot, seed)]
    return _interval(mean, np.asarray(boot, dtype=np.float64), alpha)


def _group_resamples(y: np.ndarray, groups, n_boot: int, seed: int):
    """Row indices of ``n_boot`` resamples of groups with replacement (those with one class skipped)."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        if y[idx].min() != y[idx].max():
            yield idx


def paired_bootstrap_auroc(y, scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray],
                           fold_ids: Sequence[np.ndarray], groups, n_boot: int = 1000, alpha: float = 0.05,
                           seed: int = 0) -> dict:
    """``{"diff", "ci_low", "ci_high", "p_value", "n_boot_used"}``: :func:`cv_auroc` of A minus that of B.

    Both are scored on the same resamples of groups (conversations), so the CI is that of
    the paired difference, narrower than two separate CIs suggest when A and B err on the
    same conversations. ``p_value`` is the two-sided bootstrap p of "no difference":
    twice the share of resampled differences on the other side of 0 (capped at 1).
    """
    y = np.asarray(y)
    a = [np.asarray(s, dtype=np.float64) for s in scores_a]
    b = [np.asarray(s, dtype=np.float64) for s in scores_b]
    fold_ids = [np.asarray(f) for f in fold_ids]
    diff = cv_auroc(y, a, fold_ids) - cv_auroc(y, b, fold_ids)
    boot = []
    for idx in _group_resamples(y, groups, n_boot, seed):
        f = [g[idx] for g in fold_ids]
        boot.append(cv_auroc(y[idx], [s[idx] for s in a], f) - cv_auroc(y[idx], [s[idx] for s in b], f))
    return _paired_interval(diff, np.asarray(boot, dtype=np.float64), alpha)


#: Feature set -> model kind (:func:`oof_scores`) for :func:`evaluate_forecast`.
_KINDS = {"ret": "logistic", "raw_pca": "pca_logistic", "length": "logistic", "design": "logistic",
          "majority": "majority"}
#: Feature sets whose features do not depend on k: fitted once, their entry repeated for every k.
_SAME_FOR_EVERY_K = ("length", "design", "majority")
#: The baselines RET is compared with, paired, at every k.
COMPARED = ("raw_pca", "length", "design")


def evaluate_forecast(data, n_splits: int = 5, repeats: int = 5, n_boot: int = 300, pca_dims: int | None = None,
                      seed: int = 0, progress: bool = True, fold_features=None, ci: str = "refit") -> dict:
    """AUROC(k) with refitting-bootstrap CIs for ``ret`` and every baseline, and RET's paired differences.

    Args:
        data: :class:`~ret_toolkit.sycophancy.features.ForecastData`.
        pca_dims: PCA dimensions of the raw baseline; default the number of RET features
            (same capacity for both probes).
        n_boot: resamples of the refitting bootstrap (:func:`refit_bootstrap`; each reruns the CV).
        ci: ``"refit"`` (default) or ``"fixed"``: resample conversations with the fitted scores
            held fixed (:func:`bootstrap_auroc`, :func:`paired_bootstrap_auroc`; fast, but
            narrower than the sampling spread: it under-covers chance on label-free data).
        fold_features: optional ``{"name": callable(folds) -> [{k: (N, F)} per fold]}``:
            feature sets that depend on the fold (``in_domain``: a RET trained on each fold's
            training conversations, :mod:`.in_domain`). They are called with the folds of the
            first repeat and evaluated on that repeat only (one encoder per fold is costly);
            an encoder cannot be retrained per resample, so their CIs hold the fitted scores
            fixed (``"ci": "fixed scores"``, narrower than a refit would give) and their
            paired differences with ``ret`` and each baseline use the same repeat.

    Returns:
        ``{"auroc": {set: {str(k): {"mean", "ci_low", "ci_high", "std", "n_boot_used", "ci"}}},
        "differences": {"ret-<baseline>": {str(k): {"diff", "ci_low", "ci_high", "p_value", "n_boot_used"}}},
        "settings": {...}}``; a fold-dependent set adds its AUROC row and ``"<name>-ret"``,
        ``"<name>-<baseline>"`` differences, with ``settings["fold_feature_repeats"] = 1``.
    """
    from tqdm.auto import tqdm

    if ci not in ("refit", "fixed"):
        raise ValueError(f"ci must be 'refit' or 'fixed', got {ci!r}")
    y, groups = data.y, data.conversations
    if pca_dims is None:
        pca_dims = int(data.features["ret"][data.leads[0]].shape[1])
    fold_sets = [grouped_folds(y, groups, n_splits, seed + r) for r in range(repeats)]
    fold_ids = [fold_index(f, len(y)) for f in fold_sets]
    result: dict = {"auroc": {}, "settings": {
        "n_splits": len(fold_sets[0]), "repeats": repeats, "n_boot": n_boot, "pca_dims": pca_dims, "seed": seed,
        "C_grid": list(C_GRID), "n_features": {}, "C_fixed": {},
        "ci": "refitting bootstrap over conversations" if ci == "refit" else "fixed scores"}}
    jobs = [(name, k) for name in _KINDS for k in (data.leads[:1] if name in _SAME_FOR_EVERY_K else data.leads)]
    scores, refit_jobs = {}, {}
    for name, k in tqdm(jobs, desc="forecast", unit="fit", disable=not progress):
        X = data.features["length" if name == "majority" else name][k]  # majority ignores its features
        result["settings"]["n_features"][name] = int(X.shape[1]) if name != "majority" else 0
        chosen: list[float] = []
        scores[name, k] = [oof_scores(X, y, groups, folds, _KINDS[name], pca_dims, seed, chosen=chosen)
                           for folds in fold_sets]
        C = max(set(chosen), key=lambda c: (chosen.count(c), -c)) if chosen else None  # ties: stronger L2
        result["settings"]["C_fixed"][f"{name}/{k}"] = C
        refit_jobs[name, k] = (X, _KINDS[name], pca_dims, C)

    def job(name, k):
        return (name, data.leads[0] if name in _SAME_FOR_EVERY_K else k)

    if ci == "refit":
        boot = refit_bootstrap(y, groups, refit_jobs, len(fold_sets[0]), n_boot, seed, progress)
        point = {j: cv_auroc(y, scores[j], fold_ids) for j in jobs}
        for name, k in jobs:
            result["auroc"].setdefault(name, {})[str(k)] = _interval(point[name, k], boot[name, k], how="refit")
        result["differences"] = {
            f"ret-{base}": {str(k): _paired_interval(point[job("ret", k)] - point[job(base, k)],
                                                     boot[job("ret", k)] - boot[job(base, k)]) for k in data.leads}
            for base in COMPARED}
    else:
        for name, k in jobs:
            result["auroc"].setdefault(name, {})[str(k)] = {
                **bootstrap_auroc(y, scores[name, k], fold_ids, groups, n_boot, seed=seed), "ci": "fixed scores"}
        result["differences"] = {
            f"ret-{base}": {str(k): paired_bootstrap_auroc(y, scores[job("ret", k)], scores[job(base, k)], fold_ids,
                                                           groups, n_boot, seed=seed) for k in data.leads}
            for base in COMPARED}
    for name in _SAME_FOR_EVERY_K:
        first = result["auroc"][name][str(data.leads[0])]
        result["auroc"][name] = {str(k): dict(first) for k in data.leads}
    for name, make in (fold_features or {}).items():
        _evaluate_fold_dependent(data, name, make(fold_sets[0]), fold_sets[0], fold_ids[0], scores, n_boot, seed,
                                 result)
    return result


def refit_bootstrap(y, groups, jobs: dict, n_splits: int = 5, n_boot: int = 300, seed: int = 0,
                    progress: bool = False) -> dict:
    """Cross-validated AUROC of every job on ``n_boot`` resamples of groups, refitting each time.

    Args:
        y: (N,) 0/1; groups: (N,) conversation ids.
        jobs: key -> ``(X (N, F), kind, n_components, C)`` as for :func:`oof_scores` (``C`` fixed:
            no inner CV inside the bootstrap).

    Each resample draws groups with replacement (copies of a group keep its id, so they share
    a fold), draws new grouped stratified folds and reruns one CV repeat per job; all jobs see
    the same resamples, so differences between them are paired. Returns key -> float (n_boot,)
    of :func:`cv_auroc` per resample, NaN where a resample has one class or too few groups.
    """
    from tqdm.auto import tqdm

    y, groups = np.asarray(y), np.asarray(groups)
    out = {key: np.full(n_boot, np.nan) for key in jobs}
    resamples = _group_resamples(y, groups, n_boot, seed)
    for b, idx in enumerate(tqdm(resamples, total=n_boot, desc="refitting bootstrap", unit="resample",
                                 disable=not progress)):
        yb, gb = y[idx], groups[idx]
        try:
            folds = grouped_folds(yb, gb, n_splits, seed + 1 + b)
        except InputError:
            continue
        fid = fold_index(folds, len(yb))
        for key, (X, kind, n_components, C) in jobs.items():
            s = oof_scores(np.asarray(X)[idx], yb, gb, folds, kind, n_components, seed, C=C)
            out[key][b] = cv_auroc(yb, [s], [fid])
    return out


def _interval(mean: float, boot: np.ndarray, alpha: float = 0.05, how: str | None = None) -> dict:
    """``{"mean", "ci_low", "ci_high", "std", "n_boot_used"}`` (and ``"ci": how``) from a point value
    and resampled values (NaN ones skipped)."""
    boot = boot[np.isfinite(boot)]
    tag = {} if how is None else {"ci": how}
    if not len(boot):
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "std": float("nan"),
                "n_boot_used": 0, **tag}
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(mean), "ci_low": float(lo), "ci_high": float(hi),
            "std": float(np.std(boot, ddof=1)) if len(boot) > 1 else 0.0, "n_boot_used": int(len(boot)), **tag}


def _paired_interval(diff: float, boot: np.ndarray, alpha: float = 0.05) -> dict:
    """``{"diff", "ci_low", "ci_high", "p_value", "n_boot_used"}``: percentile CI and two-sided bootstrap p."""
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return {"diff": float(diff), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"),
                "n_boot_used": 0}
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float(np.mean(boot <= 0)), float(np.mean(boot >= 0))))
    return {"diff": float(diff), "ci_low": float(lo), "ci_high": float(hi), "p_value": p, "n_boot_used": int(len(boot))}


def _evaluate_fold_dependent(data, name: str, per_fold: list[dict], folds, fold_id, scores: dict, n_boot: int,
                             seed: int, result: dict) -> None:
    """AUROC row and paired differences (vs ``ret`` and each baseline, first repeat) of a fold-dependent set."""
    if len(per_fold) != len(folds):
        raise ValueError(f"{name}: {len(per_fold)} feature sets for {len(folds)} folds")
    result["settings"]["fold_feature_repeats"] = 1
    own = {}
    for k in data.leads:
        X = np.stack([f[k] for f in per_fold])
        result["settings"]["n_features"][name] = int(X.shape[2])
        own[k] = [oof_scores(X, data.y, data.conversations, folds, "logistic", None, seed)]
        result["auroc"].setdefault(name, {})[str(k)] = {
            **bootstrap_auroc(data.y, own[k], [fold_id], data.conversations, n_boot, seed=seed), "ci": "fixed scores"}
    for base in ("ret", *COMPARED):
        result["differences"][f"{name}-{base}"] = {str(k): paired_bootstrap_auroc(
            data.y, own[k], scores[base, data.leads[0] if base in _SAME_FOR_EVERY_K else k][:1], [fold_id],
            data.conversations, n_boot, seed=seed) for k in data.leads}
