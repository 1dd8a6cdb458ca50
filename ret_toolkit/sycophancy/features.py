"""Early features for the sycophancy forecast, read from a labelled forecasting store.

Positions. A sequence of the store is ``n_prompt`` prompt tokens (everything up to the end
of the pushback turn, generation prompt included) followed by ``n_reply`` reply tokens. The
hidden state of row ``t`` is the model's state after reading tokens ``0..t``, so

    k = 0   -> row n_prompt - 1          (last prompt token: before any reply token)
    k = j   -> row n_prompt - 1 + j      (after reading the first j reply tokens)

(:func:`forecast_position`). A reply that ended (EOS) after fewer than ``k`` tokens gives its
last row: nothing more was read. ``turn_start`` (``/meta``) is the row where the last user
message starts; "the turn" is rows ``turn_start .. position``.

Feature sets at each k (one row per sequence):

- ``ret``: z at the position (d), mean z over the turn (d), macrostate histogram over the
  turn (K shares, summing to 1): ``2d + K`` features. z comes from the RET encoder (causal,
  so z at a row never sees later rows).
- ``raw_pca``: the raw hidden state at the position and its mean over the turn (``2 D``);
  the forecaster reduces them with PCA fitted inside each training fold.
- ``length``: log prompt length and log length of the last turn, in tokens (2); the same
  for every k.
- ``design``: one-hot pushback template and item kind (the design factors of the bank,
  from ``/meta/pushback`` and ``/meta/kind`` where the store has them); the same for every
  k. Caving rates differ by template, and hidden states encode the template, so a probe
  has to beat this to show it reads more than the prompt's design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from activation_cache.errors import InputError
from activation_cache.reader import TrajectoryStore
from ret_toolkit.macro.assign import check_store, require_centroids, sequence_hidden
from ret_toolkit.sycophancy.settings import LEADS

__all__ = ["LEADS", "FEATURE_SETS", "DESIGN_FACTORS", "ForecastData", "design_features", "forecast_position",
           "sequence_features", "extract_features"]

FEATURE_SETS = ("ret", "raw_pca", "length", "design")
#: /meta fields one-hot encoded into the ``design`` features (those the store has)
DESIGN_FACTORS = ("pushback", "kind")
_REQUIRED_META = ("caved", "conversation_id", "turn_start")


@dataclass
class ForecastData:
    """Features and targets of the kept (caved / held) sequences of a store.

    Attributes:
        ids: prompt ids, (S,).
        conversations: conversation ids (the CV groups), (S,).
        y: 1 = caved, 0 = held, int (S,).
        leads: lead times.
        features: set name -> k -> float32 (S, F) (``length`` has one entry per k too).
        n_prompt, n_reply: tokens of prompt and stored reply per sequence, int (S,).
        n_unlabelled: sequences of the store without a caved/held label (excluded).
        layer: store layer of the raw features; ret_layers: layers the RET encoder reads.
        factors: design factor (``/meta`` field) -> its value per kept sequence, (S,) str.
    """

    ids: np.ndarray
    conversations: np.ndarray
    y: np.ndarray
    leads: tuple[int, ...]
    features: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    n_prompt: np.ndarray | None = None
    n_reply: np.ndarray | None = None
    n_unlabelled: int = 0
    layer: str = ""
    ret_layers: tuple[str, ...] = ()
    factors: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_positive(self) -> int:
        return int(self.y.sum())

    def short_replies(self) -> dict[str, int]:
        """k -> number of sequences whose reply has fewer than k stored tokens (their last row is used)."""
        return {str(k): int((self.n_reply < k).sum()) for k in self.leads}


def forecast_position(n_prompt: int, n_reply: int, k: int) -> int:
    """Row (within the sequence) of the state after ``k`` reply tokens: ``n_prompt - 1 + min(k, n_reply)``."""
    if n_prompt < 1 or k < 0 or n_reply < 0:
        raise ValueError(f"need n_prompt >= 1, k >= 0, n_reply >= 0; got {n_prompt}, {k}, {n_reply}")
    return n_prompt - 1 + min(k, n_reply)


def sequence_features(h: np.ndarray, z: np.ndarray, groups: np.ndarray, n_prompt: int, n_reply: int,
                      turn_start: int, leads: Sequence[int], n_groups: int) -> dict[str, dict[int, np.ndarray]]:
    """The per-sequence feature sets (all but ``design``) at every k for one sequence.

    h: (T, D) raw hidden states; z: (T, d) RET z; groups: int (T,) macrostates in 0..n_groups-1;
    T = n_prompt + n_reply. Returns set -> k -> 1-D float32 vector (see the module docstring).
    """
    T = n_prompt + n_reply
    if not len(h) == len(z) == len(groups) == T:
        raise ValueError(f"h, z, groups have {len(h)}, {len(z)}, {len(groups)} rows; expected {T}")
    out: dict[str, dict[int, np.ndarray]] = {"ret": {}, "raw_pca": {}, "length": {}}  # design: per store
    length = np.log([n_prompt, max(n_prompt - turn_start, 1)]).astype(np.float32)
    for k in leads:
        p = forecast_position(n_prompt, n_reply, k)
        span = slice(min(max(turn_start, 0), p), p + 1)
        hist = np.bincount(groups[span], minlength=n_groups)[:n_groups] / (span.stop - span.start)
        out["ret"][k] = np.concatenate([z[p], z[span].mean(0), hist]).astype(np.float32)
        out["raw_pca"][k] = np.concatenate([h[p], h[span].mean(0)]).astype(np.float32)
        out["length"][k] = length
    return out


def design_features(factors: dict[str, Sequence[str]], n: int) -> np.ndarray:
    """One-hot columns of every factor's values, float32 (n, sum of levels); (n, 1) zeros without factors.

    Levels are sorted, so the columns do not depend on row order.
    """
    cols = [np.asarray(v, dtype=object)[:, None] == np.array(sorted(set(v)), dtype=object)[None, :]
            for v in factors.values()]
    return np.concatenate(cols, axis=1).astype(np.float32) if cols else np.zeros((n, 1), np.float32)


def _int_meta(values: list[str], name: str, path) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        raise InputError(f"{path}: /meta/{name} must hold integers") from None


@torch.no_grad()
def extract_features(store_path: str | Path, module, leads: Sequence[int] = LEADS, layer: str | int | None = None,
                     progress: bool = True) -> ForecastData:
    """Features of every labelled sequence of a forecasting store (see :mod:`.trajectories`).

    Args:
        module: a RET checkpoint with macrostate centroids (``ret_macro.ckpt`` from ``ret-macro`` /
            ``ret-demo``), loaded by :func:`ret_toolkit.macro.assign.load_ret`.
        layer: store layer of the raw baseline; default the (first) layer the RET encoder reads.

    Raises:
        InputError: a store without labels, a checkpoint that does not fit the store, or one
            without centroids.
    """
    leads = tuple(sorted({int(k) for k in leads}))
    if not leads or leads[0] < 0:
        raise InputError(f"lead times k must be non-negative integers, got {leads}")
    require_centroids(module)
    n_groups = int(module.centroids.shape[0])
    with TrajectoryStore(store_path) as st:
        ret_layers = check_store(module, st)
        raw_layer = st.check_layer(ret_layers[0] if layer is None else layer)
        missing = [m for m in _REQUIRED_META if m not in st.meta_fields]
        if missing:
            raise InputError(f"{store_path}: not a labelled sycophancy store (no /meta/{missing[0]})")
        caved = st.meta_column("caved")
        conv = st.meta_column("conversation_id")
        pid = st.meta_column("prompt_id")
        turn_start = _int_meta(st.meta_column("turn_start"), "turn_start", store_path)
        keep = [s for s, c in enumerate(caved) if c in ("0", "1")]
        factors = {f: np.array(st.meta_column(f), dtype=object)[keep] for f in DESIGN_FACTORS if f in st.meta_fields}
        feats: dict[str, dict[int, list]] = {name: {k: [] for k in leads} for name in ("ret", "raw_pca", "length")}
        n_prompt, n_reply = [], []
        for s in tqdm(keep, desc="features", unit="seq", disable=not progress):
            gen = st.generated(s)
            n_p = int(np.argmax(gen)) if gen.any() else len(gen)  # generated rows follow the prompt
            h_ret = sequence_hidden(st, s, ret_layers)
            z = module.encode_sequence(torch.from_numpy(h_ret))
            groups = module.assign(z).numpy()
            h = h_ret if raw_layer == ret_layers[0] and len(ret_layers) == 1 else st.hidden(s, raw_layer)
            f = sequence_features(h.astype(np.float32), z.numpy(), groups, n_p, len(gen) - n_p,
                                  int(turn_start[s]), leads, n_groups)
            for name in feats:
                for k in leads:
                    feats[name][k].append(f[name][k])
            n_prompt.append(n_p)
            n_reply.append(len(gen) - n_p)
    design = design_features(factors, len(keep))
    return ForecastData(
        ids=np.array([pid[s] for s in keep], dtype=object), conversations=np.array([conv[s] for s in keep], dtype=object),
        y=np.array([int(caved[s]) for s in keep], dtype=np.int64), leads=leads,
        features={name: {k: (np.stack(v) if v else np.zeros((0, 0), np.float32)) for k, v in by_k.items()}
                  for name, by_k in feats.items()} | {"design": {k: design for k in leads}},
        n_prompt=np.array(n_prompt, dtype=np.int64), n_reply=np.array(n_reply, dtype=np.int64),
        n_unlabelled=len(caved) - len(keep), layer=raw_layer, ret_layers=tuple(ret_layers), factors=factors)
