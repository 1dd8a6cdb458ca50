"""From a trained RET checkpoint and a store to macrostates, metrics and a report.

    encode z (streaming, HDF5) -> k-means on training sequences -> groups
    -> summaries + transitions -> held-out evaluation against baselines

The training/held-out split is the one the checkpoint was trained with (its
data module records it in the checkpoint), so held-out numbers are on
sequences the encoder never saw.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activation_cache.errors import InputError, option
from activation_cache.outputs import OutputDir, write_json
from activation_cache.reader import TrajectoryStore
from ret_toolkit.macro.assign import (
    assign_groups,
    check_store,
    encode_store,
    fit_centroids,
    load_ret,
    open_macro,
    rows_of,
    save_with_centroids,
)
from ret_toolkit.macro.baselines import BASELINES
from ret_toolkit.macro.heldout import evaluate_sequences
from ret_toolkit.macro.settings import N_MACROSTATES, EvaluationSettings
from ret_toolkit.macro.summaries import summarize_groups, trajectory_records
from ret_toolkit.checkpoint import read_checkpoint
from ret_toolkit.storeset import recorded_split

log = logging.getLogger(__name__)


@dataclass
class MacroResult:
    """Where everything went, plus the numbers."""

    checkpoint: Path  # RET checkpoint with centroids
    macro_file: Path  # z and groups per token
    metrics: dict[str, Any]
    summary: dict[str, Any]
    trajectories: list[dict[str, Any]]
    train_sequences: np.ndarray
    heldout_sequences: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """Paths, held-out metrics and group summary (``metrics.json`` and ``summary.json`` together)."""
        return {"checkpoint": str(self.checkpoint), "macro_file": str(self.macro_file), "metrics": self.metrics,
                "summary": self.summary, "train_sequences": self.train_sequences.tolist(),
                "heldout_sequences": self.heldout_sequences.tolist()}

    def headline(self) -> str:
        """One line: held-out P(same next group) of RET and of each k-means baseline."""
        tc = self.metrics["temporal_consistency"]
        return (f"k={self.metrics['k']}, held-out P(same next) RET {tc['ret']['p_same_next']:.3f} "
                f"vs raw {tc['kmeans_raw']['p_same_next']:.3f}, pca {tc['kmeans_pca']['p_same_next']:.3f}, "
                f"window {tc['kmeans_window']['p_same_next']:.3f}, ema {tc['ema']['p_same_next']:.3f}")

    def table(self) -> str:
        """The held-out comparison table (:func:`format_metrics`), as ``ret-demo`` prints it."""
        return format_metrics(self.metrics)

    def figure(self):
        """Transition heatmap between the groups (plotly; :func:`ret_toolkit.viz.transition_heatmap`)."""
        from ret_toolkit.viz.transitions import transition_heatmap

        return transition_heatmap(self.summary)


def checkpoint_split(ckpt: str | Path, store_path: str | Path, n_sequences: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sequence indices of ``store_path`` in the split the checkpoint was trained with
    (:func:`~ret_toolkit.storeset.recorded_split`)."""
    return recorded_split(read_checkpoint(ckpt, "RET"), store_path, n_sequences)


#: Held-out sequences the evaluation needs (the closure gap fits on half and scores on the other half).
MIN_HELD_OUT = 2

#: Files :func:`build_macrostates` writes into its output directory.
MACRO_FILES = ("macrostates.h5", "ret_macro.ckpt", "summary.json", "metrics.json", "report.html")


def macro_output_dir(out_dir: str | Path, ckpt: str | Path, store_path: str | Path, k: int, seed: int,
                     overwrite: bool = False) -> OutputDir:
    """The checked output directory of a ``ret-macro`` run (refuses other settings unless ``overwrite``)."""
    settings = {"ckpt": str(Path(ckpt).resolve()), "store": str(Path(store_path).resolve()), "k": int(k),
                "seed": int(seed)}
    return OutputDir(out_dir, "ret-macro", settings, files=MACRO_FILES, overwrite=overwrite)


def build_macrostates(
    ckpt: str | Path,
    store_path: str | Path,
    out_dir: str | Path | OutputDir,
    n_macrostates: int = N_MACROSTATES,
    seed: int = 0,
    n_trajectories: int = 6,
    progress: bool = True,
    report: bool = True,
    overwrite: bool = False,
    *,
    k: int | None = None,
) -> MacroResult:
    """Encode, cluster, summarise and evaluate; writes into ``out_dir``:

    ``macrostates.h5`` (z, group per token), ``ret_macro.ckpt`` (the checkpoint
    plus centroids), ``summary.json``, ``metrics.json`` and (with ``report``)
    ``report.html``. Everything is checked first; the files are staged and
    moved into place only when all are written, so a refused or failed run
    leaves an earlier run's outputs as they were. A directory holding a run
    with other settings is refused unless ``overwrite``. ``out_dir`` may also
    be an :class:`~activation_cache.outputs.OutputDir` that the caller has
    entered (the demo stages its own files beside these; it runs the three steps,
    :meth:`MacroInputs.checked`, :func:`macrostates_into` and :func:`write_macro_files`,
    itself, to add its own block to the metrics before they are written).

    ``n_macrostates`` is the number of k-means clusters; ``k`` is its deprecated name.
    """
    if k is not None:
        warnings.warn("build_macrostates(k=...) is deprecated; use n_macrostates=", DeprecationWarning, stacklevel=2)
        n_macrostates = k
    k = n_macrostates
    if k < 2:  # before the output directory is looked at (MacroInputs.checked says it again for other callers)
        raise InputError(f"{option('n_macrostates')} must be >= 2, got {k}")
    out = out_dir if isinstance(out_dir, OutputDir) else macro_output_dir(out_dir, ckpt, store_path, k, seed, overwrite)
    inputs = MacroInputs.checked(ckpt, store_path, k)
    with nullcontext(out) if isinstance(out_dir, OutputDir) else out:
        result = macrostates_into(out, inputs, seed, n_trajectories, progress)
        write_macro_files(out, result, report)
    return result


@dataclass
class MacroInputs:
    """A RET checkpoint and a store, checked against each other, with the checkpoint's split.

    ``module`` / ``data``: the checkpoint as a module and as its dict (copied with the
    centroids); ``train`` / ``held``: sequence indices of the split it was trained with.
    """

    store_path: Path
    module: Any
    data: dict
    train: np.ndarray
    held: np.ndarray
    n_macrostates: int

    @classmethod
    def checked(cls, ckpt: str | Path, store_path: str | Path, n_macrostates: int) -> MacroInputs:
        """Load and check everything :func:`build_macrostates` needs, before anything is written."""
        if n_macrostates < 2:
            raise InputError(f"{option('n_macrostates')} must be >= 2, got {n_macrostates}")
        module = load_ret(ckpt)
        data = read_checkpoint(ckpt, "RET")
        with TrajectoryStore(store_path) as store:
            check_store(module, store)
            train, held = recorded_split(data, store_path, store.n_sequences)
        if len(held) == 0:
            held = train  # no validation split: evaluate in-sample, and say so
            log.warning("checkpoint has no held-out sequences; evaluating on training sequences")
        if len(held) < MIN_HELD_OUT:  # the closure scores fit on half of them and score on the other half
            raise InputError(f"{store_path}: ret-macro evaluates on at least {MIN_HELD_OUT} held-out sequences, but "
                             f"the checkpoint's split leaves {len(held)} of the store's {len(train) + len(held)}; "
                             "extract more prompts (10 or more with the default 20 % split)")
        return cls(Path(store_path), module, data, train, held, int(n_macrostates))


def macrostates_into(out: OutputDir, inputs: MacroInputs, seed: int = 0, n_trajectories: int = 6,
                     progress: bool = True) -> MacroResult:
    """Stage ``macrostates.h5`` and ``ret_macro.ckpt`` in ``out`` (entered) and evaluate on the held-out sequences.

    The JSON files and the report are :func:`write_macro_files`' job, so a caller (the demo)
    can add to the metrics first. The result's paths are where the files go when ``out``
    is committed.
    """
    module, train, held, k = inputs.module, inputs.train, inputs.held, inputs.n_macrostates
    macro_file = encode_store(module, inputs.store_path, out.stage("macrostates.h5"), progress=progress)
    with TrajectoryStore(inputs.store_path) as store:
        with open_macro(macro_file) as f:
            z_train = f["z"][rows_of(store.offsets, train)]
        centroids = fit_centroids(z_train, k, seed)
        save_with_centroids(module, inputs.data, out.stage("ret_macro.ckpt"), centroids)
        assign_groups(macro_file, module)
        with open_macro(macro_file) as f:
            groups = f["group"][:]
            z_all = f["z"]
            held_z = [z_all[store.offsets[s] : store.offsets[s + 1]] for s in held]
        summary = summarize_groups(store, groups, k)
        picks = held[np.linspace(0, len(held) - 1, min(n_trajectories, len(held))).astype(int)]
        trajectories = trajectory_records(store, groups, picks)
        metrics = _evaluate(module, store, groups, held_z, train, held, k, seed, progress)
    metrics.update(n_train_sequences=int(len(train)), n_heldout_sequences=int(len(held)), k=int(k),
                   effective_rank=_effective_rank(np.concatenate(held_z)))
    return MacroResult(out.final("ret_macro.ckpt"), out.final("macrostates.h5"), metrics, summary, trajectories,
                       train, held)


def write_macro_files(out: OutputDir, result: MacroResult, report: bool = True) -> None:
    """Stage ``summary.json``, ``metrics.json`` and (with ``report``) ``report.html`` of ``result``, once each."""
    write_json(out.stage("summary.json"), result.summary)
    write_json(out.stage("metrics.json"), result.metrics)
    if report:
        from ret_toolkit.viz.report import write_report

        write_report(out.stage("report.html"), result.metrics, result.summary, result.trajectories)


def _effective_rank(z: np.ndarray) -> float:
    from ret_toolkit.macro.rank import effective_rank

    return float(effective_rank(torch.from_numpy(z)))


def _evaluate(module, store, groups, held_z, train, held, k, seed, progress) -> dict[str, Any]:
    """Fit baselines on (a sample of) training tokens and compare on held-out sequences."""
    from tqdm.auto import tqdm

    # the three steps take comparable time (reading, fitting the baselines, the closure MLPs)
    with tqdm(total=3, desc="held-out evaluation", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        ret_groups = [groups[store.offsets[s] : store.offsets[s + 1]] for s in held]
        return evaluate_sequences(module, store, train, held, EvaluationSettings(n_macrostates=k, seed=seed),
                                  z=held_z, groups=ret_groups,
                                  on_step=lambda: bar.update(1)).metrics


def format_metrics(m: dict) -> str:
    """The held-out comparison table of a ``metrics.json`` (RET vs the baselines), as ``ret-demo`` prints it.

    Closure gaps: against the token now (PCA_64(h_t)) and against the whole
    window (PCA_64 of h_{t-w+1..t}) at each horizon of ``closure_window``; with
    a ``generated`` block, its grouping statistics follow on the generated tokens.
    """
    names = [n for n in ("ret", *BASELINES) if n in m["temporal_consistency"]]  # older runs had no ema
    windows = sorted(m.get("closure_window", {}), key=int)
    tc, mi = m["temporal_consistency"], m["token_mi_bits"]
    lines = [f"held-out: {m['n_heldout_sequences']} sequences, k={m['k']}, effective rank {m['effective_rank']:.2f}",
             f"{'method':<14}{'P(same next)':>13}{'run length':>12}{'token MI':>10}{'max occ.':>10}{'closure gap':>13}"
             + "".join(f"{'window +' + t:>11}" for t in windows)]
    for name in names:
        gap = m["closure_gap"].get(name)
        window_gaps = [m["closure_window"][t].get(name, {}).get("gap") for t in windows]
        cells = "".join(f"{'—' if g is None else f'{g:.3f}':>11}" for g in window_gaps)
        lines.append(f"{name:<14}{tc[name]['p_same_next']:>13.3f}{tc[name]['mean_run_length']:>12.2f}{mi[name]:>10.3f}"
                     f"{m['group_occupancy_max'][name]:>10.3f}{'—' if gap is None else f'{gap:.3f}':>13}{cells}")
    gen = m.get("generated")
    if gen:
        lines.append(f"generated tokens only: {gen['n_tokens']:.0f} tokens in {gen['n_sequences']:.0f} runs")
        gtc, gmi = gen["temporal_consistency"], gen["token_mi_bits"]
        for name in names:
            lines.append(f"{name:<14}{gtc[name]['p_same_next']:>13.3f}{gtc[name]['mean_run_length']:>12.2f}"
                         f"{gmi[name]:>10.3f}{gen['group_occupancy_max'][name]:>10.3f}")
    return "\n".join(lines)
