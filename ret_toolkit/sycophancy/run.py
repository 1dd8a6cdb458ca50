"""End to end: dataset -> trajectories -> labels -> early features -> forecast -> forecast.json + figure.

The API behind ``ret-forecast`` (and the benchmark and notebook 04)::

    from ret_toolkit.sycophancy.run import ForecastSettings, run_forecast
    result = run_forecast("bank", "forecast_out", macro_ckpt="demo_out/ret_macro.ckpt")
    result["auroc"]["ret"]["0"]     # {"mean", "ci_low", "ci_high", ...}

``out`` receives the stores of both turns (see :mod:`.trajectories`), ``forecast.json``
and ``forecast.html``. Check, then write: the directory's run record (``ret_runs.json``)
is compared with this run's settings before the model is loaded; a run with other
settings is refused (nothing changes) unless ``overwrite``. The stores are reused across
reruns while their own extraction config matches; ``forecast.json`` / ``forecast.html``
are staged and moved into place when the run has succeeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Sequence

from activation_cache.errors import InputError, option, other_name_hint
from activation_cache.layers import layer_spec, parse_layers
from activation_cache.gguf_cache import file_sha256
from activation_cache.models import model_name, model_revision, use_chat_template
from activation_cache.outputs import OutputDir, with_options, write_json
from activation_cache.ranks import Rank, rank_device
from activation_cache.settings import placement_of
from ret_toolkit.sycophancy.features import extract_features
from ret_toolkit.sycophancy.settings import UNRECORDED, ForecastSettings, check_settings
from ret_toolkit.sycophancy.result import ForecastResult
from ret_toolkit.sycophancy.trajectories import (
    TraceSettings,
    pick_items,
    trace_dataset,
)

log = logging.getLogger(__name__)

__all__ = ["ForecastSettings", "run_forecast", "check_settings", "forecast_output_dir", "FORECAST_FILES"]

#: The results ``ret-forecast`` writes into its output directory. The stores (turn1.h5 /
#: turn2.h5 or choice.h5) are not among them: an interrupted run leaves them to be resumed,
#: and they check their own extraction config.
FORECAST_FILES = ("forecast.json", "forecast.html")


#: Options added after the first release, recorded only when set (earlier run directories still match).
_LATE_OPTIONS = {"chat_template": None, "dtype": "auto", "compression": None}


def _finite(x):
    """NaN / inf -> None, recursively, so forecast.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _dataset_name(dataset, dataset_name: str | None) -> str:
    name = str(dataset) if isinstance(dataset, (str, Path)) else (dataset_name or "<items>")
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_file() else name


def _items_digest(items: Sequence) -> str:
    rows = [asdict(it) if is_dataclass(it) else repr(it) for it in items]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def _inputs(out: Path, ckpt_sha256: str, revision: str) -> dict | None:
    """What the results depend on beyond the recorded settings: the checkpoint's bytes (their sha256),
    the model's revision and the stores in ``out`` (:func:`~activation_cache.schema.shard_record` of
    each); None when the model's revision cannot be known (then results are never reused)."""
    from activation_cache import schema

    if not revision:
        return None
    stores = {}
    for path in sorted(Path(out).glob("*.h5")):
        try:
            with schema.open_h5(path, "r") as f:
                stores[path.name] = schema.shard_record(f)
        except (InputError, KeyError, OSError):
            stores[path.name] = None
    return {"macro_ckpt_sha256": ckpt_sha256, "model_revision": revision, "stores": stores}


def _reusable_result(od: OutputDir, inputs_of) -> dict | None:
    """The ``forecast.json`` of an earlier run in ``od`` with these settings and inputs (``inputs_of()``, read
    only when the cheap checks pass: it opens every store), else None."""
    path = od.final("forecast.json")
    if od.overwrite or not od.holds_this_run() or not path.is_file():
        return None
    inputs = inputs_of()
    if inputs is None:
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("inputs") == inputs else None


def forecast_output_dir(out: str | Path, settings: ForecastSettings, dataset: str, items: Sequence,
                        macro_ckpt: str | Path, model: str) -> OutputDir:
    """The checked output directory of a ``ret-forecast`` run: refuses, before anything is
    written, a directory that holds a run with other settings unless ``settings.overwrite``.

    The recorded settings are every :class:`ForecastSettings` field but ``overwrite``, the
    dataset (name or resolved path) and a digest of the items used, the resolved checkpoint
    path and the model name.
    """
    values = asdict(settings)
    late = {k: values.pop(k) for k in _LATE_OPTIONS}
    record = with_options({k: v for k, v in values.items()
                           if k not in UNRECORDED and (settings.in_domain or not k.startswith("in_domain"))},
                          _LATE_OPTIONS, late)
    record.update(dataset=dataset, items_sha256=_items_digest(items),
                  macro_ckpt=str(Path(macro_ckpt).resolve()), model=model)
    return OutputDir(out, "ret-forecast", record, files=FORECAST_FILES, overwrite=settings.overwrite)


def run_forecast(dataset, out: str | Path, macro_ckpt: str | Path, model_spec: str | None = None,
                 settings: ForecastSettings = ForecastSettings(), loaded=None, progress: bool = True,
                 dataset_name: str | None = None, *, rank: Rank | None = None) -> ForecastResult | None:
    """Run the whole forecast into ``out``; returns its :class:`~ret_toolkit.sycophancy.result.ForecastResult`
    (the ``forecast.json`` record).

    Args:
        dataset: ``"bank"``, a JSONL file (Anthropic format or a bank of one's own), or a list
            of items from :func:`~ret_toolkit.sycophancy.dataset.load_dataset`.
        macro_ckpt: RET checkpoint with macrostate centroids (``ret_macro.ckpt``).
        model_spec: model spec (None: the embedded SmolLM2); ``loaded`` skips loading it again
            (else ``settings.device``, ``model_dtype`` and ``device_map`` place it; the stores
            record the resolved weight dtype, so a run in another precision re-traces them).
        dataset_name: recorded in forecast.json (and the run record) when ``dataset`` is a
            list of items.
        rank: under torchrun, this process's rank
            (:func:`activation_cache.distributed.detect_rank`): every rank traces its share
            of the conversations, rank 0 labels them, fits the forecasts, writes the results
            and returns them; the other ranks return None.

    ``out`` keeps the stores between runs: a rerun with the same settings reuses them (and
    resumes an interrupted one). A directory that holds a run with other settings is refused
    before the model is loaded, unless ``settings.overwrite`` (see :class:`ForecastSettings`).
    forecast.json / forecast.html are replaced only when the whole run has succeeded.

    Raises:
        InputError: bad settings, dataset, checkpoint, output directory, or a model the
            checkpoint was not trained on.
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
    name = _dataset_name(dataset, dataset_name)
    od = forecast_output_dir(out, settings, name, items, macro_ckpt, loaded.name if loaded else model_name(model_spec))
    source = module.hparams.source_model
    if source and loaded is None and model_name(model_spec) != source:  # refused before the model is loaded
        raise InputError(f"{macro_ckpt}: RET checkpoint was trained on {source!r}, not on {model_name(model_spec)!r} "
                         f"({other_name_hint(source)})")
    ckpt_sha256 = file_sha256(Path(macro_ckpt))
    revision = loaded.revision if loaded else model_revision(model_spec)
    reused = None if rank is not None else _reusable_result(od, lambda: _inputs(out, ckpt_sha256, revision))
    if reused is not None:
        log.info("same settings and inputs as the run in %s: its results are reused", out)
        return ForecastResult(reused)
    if loaded is None:
        from activation_cache.models import load_model

        where = placement_of(settings)
        if rank is not None and where["device_map"] is None:
            where["device"] = rank_device(where["device"], rank)
        loaded = load_model(model_spec, **where, chat_template=settings.chat_template, progress=progress)
    else:
        use_chat_template(loaded, settings.chat_template)
    if module.hparams.source_model and loaded.name != module.hparams.source_model:
        raise InputError(f"{macro_ckpt}: RET checkpoint was trained on {module.hparams.source_model!r}, "
                         f"not on {loaded.name!r}")
    raw = parse_layers(settings.layer if settings.layer is not None else ret_layers[0], loaded.arch.n_layers)
    if len(raw) != 1:
        raise InputError(f"{option('layer')} {settings.layer!r} selects {len(raw)} layers; the raw baseline reads one")
    raw_layer = raw[0]
    layers = layer_spec(dict.fromkeys(ret_layers + raw))
    trace_settings = TraceSettings(max_new_tokens=settings.max_new_tokens, pushbacks=settings.pushbacks,
                                   seed=settings.seed, batch_size=settings.batch_size, dtype=settings.dtype,
                                   compression=settings.compression, overwrite=settings.overwrite)
    if rank is not None and rank.rank != 0:  # rank 0 alone writes the run record and the results
        trace_dataset(items, out, loaded, layers, trace_settings, model_spec=model_spec, progress=progress, rank=rank)
        return None
    with od:
        trace = trace_dataset(items, out, loaded, layers, trace_settings, model_spec=model_spec, progress=progress, rank=rank)
        if not trace.store.exists():  # two-turn items, and not one first answer was right
            raise InputError(f"{name}: none of the {len(items)} first answers was correct {trace.first_turn}, so there "
                             f"is no pushback to forecast; use more items ({option('n_items')}) or a model that "
                             "answers them (turn1.h5 is kept for a rerun)")
        counts = trace.summary()
        log.info("labels: %d kept (%d caved, %d held), %d excluded %s", counts["n_kept"], counts["n_positive"],
                 counts["n_negative"], counts["n_excluded"], {k: v for k, v in counts["exclusions"].items() if v})
        data = extract_features(trace.store, module, settings.leads, layer=raw_layer, progress=progress)
        fold_features = None
        if settings.in_domain:
            from ret_toolkit.sycophancy.in_domain import in_domain_features

            fold_features = {"in_domain": lambda folds: in_domain_features(
                trace.store, data, folds, module, out / "in_domain_runs", epochs=settings.in_domain_epochs,
                stride=settings.in_domain_stride, seed=settings.seed, progress=progress)}
        ev = evaluate_forecast(data, n_splits=settings.folds, repeats=settings.repeats, n_boot=settings.n_boot,
                               pca_dims=settings.pca_dims, seed=settings.seed, progress=progress,
                               fold_features=fold_features)
        result = {
            "n_items": counts["n_items"], "n_excluded": counts["n_excluded"], "n_positive": counts["n_positive"],
            "n_kept": counts["n_kept"], "n_conversations": int(len(set(data.conversations))),
            "auroc": ev["auroc"], "differences": ev["differences"],
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
        if rank is None:  # what a rerun with the same settings compares before reusing these results
            result["inputs"] = _inputs(out, ckpt_sha256, loaded.revision)
        result = _finite(result)
        write_json(od.stage("forecast.json"), result)
        write_forecast_report(od.stage("forecast.html"), result)
    return ForecastResult(result)
