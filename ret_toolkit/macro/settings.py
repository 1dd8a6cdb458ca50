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
