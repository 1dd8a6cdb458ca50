"""RET against its baselines on chosen sequences of a store: the held-out block, or a tuning split.

:func:`evaluate_sequences` reads the sequences, fits the baselines on
training sequences and scores every method with
:func:`~ret_toolkit.macro.evaluate.evaluate_groupings`. ``build_macrostates``
calls it on the checkpoint's held-out split; ``benchmarks/bench_ret_ablation.py``
calls it on a tuning split and a test split separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from activation_cache.reader import TrajectoryStore
from ret_toolkit.macro.assign import check_store, fit_centroids, sequence_hidden
from ret_toolkit.macro.baselines import BASELINES, Baselines, fit_baselines
from ret_toolkit.macro.evaluate import evaluate_groupings
from ret_toolkit.macro.module import RETModule, nearest_centroid
from ret_toolkit.macro.settings import EvaluationSettings

#: Training tokens read for the k-means / PCA baselines (whole sequences): their statistics settle well before.
BASELINE_TOKENS = 20_000


@dataclass
class HeldOutEvaluation:
    """What :func:`evaluate_sequences` measured, and the groupings it measured.

    ``metrics``: the held-out block of ``metrics.json``; ``groups``: per method
    (``ret`` and each baseline) one (T_s,) int array per evaluated sequence;
    ``generated``: (T_s,) bools per sequence; ``baselines``: the fitted baselines.
    """

    sequences: np.ndarray
    metrics: dict[str, Any]
    groups: dict[str, list[np.ndarray]] = field(repr=False)
    generated: list[np.ndarray] = field(repr=False)
    baselines: Baselines = field(repr=False)


def standardized_hidden(module: RETModule, store: TrajectoryStore, s: int, layers: Sequence[str]) -> np.ndarray:
    """Sequence ``s`` of the store, standardised with the checkpoint's statistics: (T, D * len(layers)) float32."""
    h = sequence_hidden(store, int(s), layers).astype(np.float32)
    return ((h - module.h_mean.numpy()) / module.h_std.numpy()).astype(np.float32)


def ret_groups(module: RETModule, store: TrajectoryStore, train: Sequence[int], sequences: Sequence[int],
               k: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RET's z (T_s, d) float32 and group ids (T_s,) int64 on ``sequences``: a cosine k-means with ``k`` groups
    (seeded by ``seed``) of the z of the ``train`` sequences, each token given its nearest centroid."""
    layers = check_store(module, store)

    @torch.no_grad()  # only here: the closure test of evaluate_sequences trains its small MLPs with autograd
    def encode(s: int) -> np.ndarray:
        return module.encode_sequence(torch.from_numpy(sequence_hidden(store, int(s), layers))).float().numpy()

    z = [encode(s) for s in sequences]
    centroids = torch.from_numpy(fit_centroids(np.concatenate([encode(s) for s in train]), k, seed))
    return z, [nearest_centroid(torch.from_numpy(x), centroids, "cosine").numpy() for x in z]


def evaluate_sequences(
    module: RETModule,
    store: TrajectoryStore,
    train: Sequence[int],
    sequences: Sequence[int],
    settings: EvaluationSettings | None = None,
    *,
    z: Sequence[np.ndarray] | None = None,
    groups: Sequence[np.ndarray] | None = None,
    on_step=None,
) -> HeldOutEvaluation:
    """Score RET's groups and the baselines' on ``sequences`` (store indices), fitting on ``train``.

    ``settings`` (:class:`~ret_toolkit.macro.settings.EvaluationSettings`): the number of
    macrostates and seed of every k-means, the baselines' window and half-life, the closure
    horizons. ``z`` / ``groups``: RET's z (T_s, d) and group ids (T_s,) of ``sequences``
    when already computed (``build_macrostates``); otherwise z is encoded here and the
    groups come from a cosine k-means on the z of the training sequences.
    ``on_step``: called after reading, after fitting the baselines and after scoring.
    """
    cfg = settings or EvaluationSettings()
    k, seed = cfg.n_macrostates, cfg.seed
    layers = check_store(module, store)
    w = int(module.hparams.window)
    sequences = np.asarray(sequences, dtype=np.int64)
    rng = np.random.default_rng(seed)
    h_tr, budget = [], BASELINE_TOKENS
    for s in rng.permutation(np.asarray(train, dtype=np.int64)):
        h_tr.append(standardized_hidden(module, store, s, layers))
        budget -= len(h_tr[-1])
        if budget <= 0:
            break
    h_eval = [standardized_hidden(module, store, s, layers) for s in sequences]
    tokens = [store.tokens(int(s)) for s in sequences]
    generated = [store.generated(int(s)).astype(bool) for s in sequences]
    if groups is None:
        z, groups = ret_groups(module, store, train, sequences, k, seed)
    if on_step:
        on_step()
    baselines = fit_baselines(h_tr, k=k, d=module.hparams.z_dim, seed=seed, window=cfg.window or w,
                              ema_half_life=cfg.ema_half_life, stack_window=w)
    if on_step:
        on_step()
    mask = generated if any(g.any() for g in generated) else None
    metrics = evaluate_groupings(list(groups), list(z), h_eval, tokens, baselines, cfg, token_mask_per_seq=mask)
    if on_step:
        on_step()
    all_groups = {"ret": [np.asarray(g, dtype=np.int64) for g in groups]}
    all_groups.update({name: [baselines.assign(name, h) for h in h_eval] for name in BASELINES})
    return HeldOutEvaluation(sequences, metrics, all_groups, generated, baselines)
