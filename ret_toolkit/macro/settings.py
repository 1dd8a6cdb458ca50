"""The settings of a ``ret-macro`` run (:class:`MacroSettings`): each field is a flag of the same name.

Import-light: no torch (``ret-macro --help`` builds its flags from these fields).
"""

from __future__ import annotations

from dataclasses import dataclass

from activation_cache.settings import setting

#: Macrostates (k-means clusters of the RET codes) when none is asked for.
N_MACROSTATES = 12


@dataclass(frozen=True)
class MacroSettings:
    """Macrostates from a trained RET checkpoint and a store (:func:`~ret_toolkit.macro.pipeline.build_macrostates`).

    ckpt: RET checkpoint; store: a trajectory store of the same model and layers;
    out: output directory. n_macrostates: k-means clusters of the codes z.
    report: also write ``report.html``. overwrite: replace an earlier run with other settings.
    """

    ckpt: str = setting(help="RET checkpoint from ret-train macro")
    store: str = setting(help="trajectory store (same model and layers as the checkpoint)")
    out: str = setting(help="output directory (created)")
    n_macrostates: int = setting(N_MACROSTATES, "number of macrostates (k-means clusters of the codes z)",
                                 aliases=("--k",))
    seed: int = setting(0, "k-means seed")
    report: bool = setting(True, "write report.html (--no-report skips it)")
    overwrite: bool = setting(False, "replace the results of an earlier run with other settings in --out")


@dataclass(frozen=True)
class EvaluationSettings:
    """How held-out sequences are scored against the baselines
    (:func:`~ret_toolkit.macro.heldout.evaluate_sequences`, :func:`~ret_toolkit.macro.evaluate.evaluate_groupings`).

    n_macrostates, seed: the k-means of RET's z and of every k-means baseline (the same number of groups).
    window, ema_half_life: the window-mean baseline's w and the EMA control's half-life in tokens
    (None: the encoder's window); the whole-window closure test always uses the encoder's window.
    closure_horizons: tokens ahead of the closure gaps. horizon: tokens ahead of the next-group accuracy.
    hidden: width of the closure MLPs. closure: False scores the grouping statistics only (a tuning grid).
    """

    n_macrostates: int = N_MACROSTATES
    seed: int = 0
    window: int | None = None
    ema_half_life: float | None = None
    closure_horizons: tuple[int, ...] = (1, 4, 8)
    horizon: int = 1
    hidden: int = 64
    closure: bool = True
