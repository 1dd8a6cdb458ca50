"""End to end: dataset -> trajectories -> labels -> early features -> forecast -> forecast.json + figure.

The API behind ``ret-forecast`` (and the benchmark and notebook 04)::

    from ret_toolkit.sycophancy.run import ForecastSettings, run_forecast
    result = run_forecast("bank", "forecast_out", macro_ckpt="demo_out/ret_macro.ckpt")
    result["auroc"]["ret"]["0"]     # {"mean", "ci_low", "ci_high", ...}

``out`` receives the prompt files and stores of both turns (see :mod:`.trajectories`),
``forecast.json`` and ``forecast.html``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from activation_cache.errors import InputError, option
from ret_toolkit.sycophancy.features import KS, extract_features
from ret_toolkit.sycophancy.trajectories import PUSHBACK_MODES, TraceSettings, pick_items, trace_dataset

log = logging.getLogger(__name__)

__all__ = ["ForecastSettings", "run_forecast", "check_settings"]


@dataclass(frozen=True)
class ForecastSettings:
    """Everything ``ret-forecast`` can set besides dataset, model, checkpoint and output.

    n_items: use this many items, spread evenly over the dataset (None: all).
    ks: lead times (reply tokens read before forecasting).
    max_new_tokens: reply tokens generated per turn (>= max(ks); the labeller reads them all).
    layer: store layer of the raw baseline (default: the RET checkpoint's layer).
    pushbacks: "seeded" (one template per item) or "all" (every template).
    folds, repeats, n_boot: cross-validation and bootstrap sizes; pca_dims: raw-baseline PCA
    dimensions (default: as many as RET features).
    """

    n_items: int | None = None
    ks: tuple[int, ...] = KS
    max_new_tokens: int = 40
    layer: str | None = None
    pushbacks: str = "seeded"
    seed: int = 0
    batch_size: int = 16
    folds: int = 5
    repeats: int = 5
    n_boot: int = 1000
    pca_dims: int | None = None
    overwrite: bool = False


def check_settings(s: ForecastSettings) -> None:
    """InputError (one line) for settings that cannot work, before anything is loaded."""
    if s.n_items is not None and s.n_items < 1:
        raise InputError(f"{option('n_items')} must be >= 1, got {s.n_items}")
    if not s.ks or min(s.ks) < 0:
        raise InputError(f"{option('ks')} must be non-negative integers, got {','.join(map(str, s.ks))}")
    if s.max_new_tokens < max(s.ks) or s.max_new_tokens < 1:
        raise InputError(f"{option('max_new_tokens')} {s.max_new_tokens} must be >= 1 and >= the largest k ({max(s.ks)})")
    if s.pushbacks not in PUSHBACK_MODES:
        raise InputError(f"{option('pushbacks')} must be {' or '.join(PUSHBACK_MODES)}, got {s.pushbacks!r}")
    for name, value, low in ((option("folds"), s.folds, 2), (option("repeats"), s.repeats, 1),
                             (option("n_boot", flag="--bootstrap"), s.n_boot, 10), (option("batch_size"), s.batch_size, 1)):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    if s.pca_dims is not None and s.pca_dims < 1:
        raise InputError(f"{option('pca_dims')} must be >= 1, got {s.pca_dims}")


def _finite(x):
    """NaN / inf -> None, recursively, so forecast.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def run_forecast(dataset, out: str | Path, macro_ckpt: str | Path, model: str | None = None,
                 settings: ForecastSettings = ForecastSettings(), loaded=None, progress: bool = True,
                 dataset_name: str | None = None) -> dict:
    """Run the whole forecast into ``out``; returns the ``forecast.json`` dict.

    Args:
        dataset: ``"bank"``, a JSONL file (Anthropic format or a bank of one's own), or a list
            of items from :func:`~ret_toolkit.sycophancy.dataset.load_dataset`.
        macro_ckpt: RET checkpoint with macrostate centroids (``ret_macro.ckpt``).
        model: model spec (None: the embedded SmolLM2); ``loaded`` skips loading it again.
        dataset_name: recorded in forecast.json when ``dataset`` is a list of items.

    Raises:
        InputError: bad settings, dataset, checkpoint, or a model the checkpoint was not trained on.
    """
    from ret_toolkit.macro.assign import load_ret, require_centroids, source_layers
    from ret_toolkit.sycophancy.dataset import load_dataset
    from ret_toolkit.sycophancy.forecast import evaluate_forecast
    from ret_toolkit.viz.forecast import write_forecast_report

    check_settings(settings)
    t0 = time.perf_counter()
    out = Path(out)
    items = load_dataset(dataset, seed=settings.seed) if isinstance(dataset, (str, Path)) else list(dataset)
    items = pick_items(items, settings.n_items)
    module = load_ret(macro_ckpt)
    require_centroids(module, macro_ckpt)
    ret_layers = source_layers(module)
    if not ret_layers:
        raise InputError(f"{macro_ckpt}: RET checkpoint does not record its layers (source_layers)")
    if loaded is None:
        from activation_cache.models import load_model

        loaded = load_model(model)
    if module.hparams.source_model and loaded.name != module.hparams.source_model:
        raise InputError(f"{macro_ckpt}: RET checkpoint was trained on {module.hparams.source_model!r}, "
                         f"not on {loaded.name!r}")
    raw_layer = settings.layer if settings.layer is not None else ret_layers[0]
    layers = ",".join(dict.fromkeys(ret_layers + [str(raw_layer)]))
    out.mkdir(parents=True, exist_ok=True)

    trace = trace_dataset(items, out, loaded, layers,
                          TraceSettings(max_new_tokens=settings.max_new_tokens, pushbacks=settings.pushbacks,
                                        seed=settings.seed, batch_size=settings.batch_size,
                                        overwrite=settings.overwrite),
                          model=model, progress=progress)
    counts = trace.summary()
    log.info("labels: %d kept (%d caved, %d held), %d excluded %s", counts["n_kept"], counts["n_positive"],
             counts["n_negative"], counts["n_excluded"], {k: v for k, v in counts["exclusions"].items() if v})
    data = extract_features(trace.store, module, settings.ks, layer=raw_layer, progress=progress)
    ev = evaluate_forecast(data, n_splits=settings.folds, repeats=settings.repeats, n_boot=settings.n_boot,
                           pca_dims=settings.pca_dims, seed=settings.seed, progress=progress)
    result = {
        "n_items": counts["n_items"], "n_excluded": counts["n_excluded"], "n_positive": counts["n_positive"],
        "n_kept": counts["n_kept"], "n_conversations": int(len(set(data.conversations))),
        "auroc": ev["auroc"],
        "data": {**counts, "short_replies": data.short_replies(),
                 "mean_prompt_tokens": float(data.n_prompt.mean()) if len(data) else None},
        "forecast": ev["settings"],
        "config": {"dataset": str(dataset) if isinstance(dataset, (str, Path)) else (dataset_name or "<items>"),
                   "model": loaded.name, "model_revision": loaded.revision, "macro_ckpt": str(macro_ckpt),
                   "ret_layers": ret_layers, "raw_layer": str(raw_layer), "z_dim": int(module.hparams.z_dim),
                   "n_macrostates": int(module.centroids.shape[0]), "store": str(trace.store),
                   **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}},
        "seconds": time.perf_counter() - t0,
    }
    result = _finite(result)
    (out / "forecast.json").write_text(json.dumps(result, indent=1) + "\n")
    write_forecast_report(out / "forecast.html", result)
    return result


def format_table(result: dict, ks: Sequence[str] | None = None) -> str:
    """AUROC [95% CI] per feature set (rows) and k (columns), as plain text."""
    sets = list(result["auroc"])
    ks = list(ks or sorted(result["auroc"][sets[0]], key=int))
    head = f"{'feature set':<10}" + "".join(f"{'k=' + k:>21}" for k in ks)
    lines = [head]
    for name in sets:
        cells = []
        for k in ks:
            c = result["auroc"][name][k]
            cells.append("n/a".rjust(21) if c["mean"] is None else
                         f"{c['mean']:.3f} [{_f(c['ci_low'])}, {_f(c['ci_high'])}]".rjust(21))
        lines.append(f"{name:<10}" + "".join(cells))
    return "\n".join(lines)


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
