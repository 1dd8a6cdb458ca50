"""In-domain RET features: an encoder trained on the training folds' conversations only.

The demo RET is trained on the demo's reasoning prompts, not on conversations. The
in-domain option trains, for every outer fold of the first CV repeat, a RET of the
same architecture (every hyperparameter and the number of macrostates of the
reference checkpoint) on the turn-2 sequences of that fold's *training*
conversations, fits its macrostate centroids on their z, and computes the ``ret``
feature set (:func:`~ret_toolkit.sycophancy.features.sequence_features`) of every
kept sequence with it. The test fold's conversations are never read in training, so
the encoder, its centroids and the probe all see training conversations only.

RET training is unsupervised: labels are not read. The cost is one RET training
per fold; ``stride`` thins the training windows to keep it affordable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from activation_cache.errors import InputError
from activation_cache.reader import TrajectoryStore
from ret_toolkit.macro.assign import fit_centroids, load_ret, sequence_hidden, source_layers
from ret_toolkit.macro.module import RETModule
from ret_toolkit.macro.train import WIRED_KEYS, train

__all__ = ["training_sequences", "train_fold_ret", "in_domain_features"]

def training_sequences(store_conversations: Sequence[str], train_conversations: Sequence[str],
                       test_conversations: Sequence[str]) -> np.ndarray:
    """Store sequence indices whose conversation is a training one, int64 (n,).

    A conversation on both sides is an error: the folds must be grouped by conversation.
    """
    train, test = set(train_conversations), set(test_conversations)
    both = train & test
    if both:
        raise InputError(f"conversation {sorted(both)[0]!r} is in a training and a test fold; folds must be grouped")
    return np.array([s for s, c in enumerate(store_conversations) if c in train], dtype=np.int64)


def train_fold_ret(store: str | Path, sequences: np.ndarray, reference: RETModule, root: str | Path, *,
                   epochs: int = 3, stride: int = 4, seed: int = 0) -> RETModule:
    """A RET like ``reference`` trained on ``sequences`` of ``store``, with centroids fitted on their z.

    Returns the trained module (eval mode, CPU) with ``reference``'s number of macrostates.
    """
    hp = reference.hparams
    model = {k: v for k, v in hp.items() if k not in WIRED_KEYS}  # the data decides those
    run = train([store], layers=hp.source_layers, max_epochs=epochs, root_dir=root, seed=seed, progress=False,
                data={"window": hp.window, "max_horizon": hp.max_horizon, "stride": stride,
                      "sequences": [int(s) for s in sequences], "val_fraction": 0.1, "split_seed": seed},
                model=model)
    module = load_ret(run.checkpoint)
    layers = source_layers(module)
    with TrajectoryStore(store) as st, torch.no_grad():
        z = np.concatenate([module.encode_sequence(torch.from_numpy(sequence_hidden(st, int(s), layers))).numpy()
                            for s in sequences])
    module.centroids = torch.from_numpy(fit_centroids(z, int(reference.centroids.shape[0]), seed))
    module.centroid_metric = "cosine"
    return module


def in_domain_features(store: str | Path, data, folds, reference: RETModule, root: str | Path, *,
                       epochs: int = 3, stride: int = 4, seed: int = 0,
                       progress: bool = True) -> list[dict[int, np.ndarray]]:
    """Per fold, the ``ret`` features of every kept sequence from a RET trained on that fold's training side.

    Args:
        data: the :class:`~ret_toolkit.sycophancy.features.ForecastData` of ``store``.
        folds: ``[(train_idx, test_idx)]`` over the rows of ``data`` (grouped by conversation).
        reference: the RET checkpoint whose architecture and number of macrostates are copied.
        root: Lightning log root (one run per fold).

    Returns:
        one ``{k: float32 (S, 2d + K)}`` per fold, rows in ``data``'s order.
    """
    from ret_toolkit.sycophancy.features import extract_features

    with TrajectoryStore(store) as st:
        store_conversations = st.meta_column("conversation_id")
    out = []
    for j, (tr, te) in enumerate(tqdm(folds, desc="in-domain RET", unit="fold", disable=not progress)):
        seqs = training_sequences(store_conversations, data.conversations[tr], data.conversations[te])
        module = train_fold_ret(store, seqs, reference, Path(root) / f"fold{j}", epochs=epochs, stride=stride,
                                seed=seed)
        fold = extract_features(store, module, data.leads, layer=data.layer, progress=False)
        if not np.array_equal(fold.ids, data.ids):
            raise RuntimeError("in-domain features came out in another row order than the forecast data")
        out.append(fold.features["ret"])
    return out
