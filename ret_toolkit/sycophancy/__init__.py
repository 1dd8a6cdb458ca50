"""Sycophancy forecasting data (docs/architecture.md §3.5): questions, pushback, conversations, labels.

- :mod:`~ret_toolkit.sycophancy.bank`: :class:`SycItem` and :func:`load_bank` (facts shipped
  as package data, arithmetic and unit conversions generated from a seed).
- :mod:`~ret_toolkit.sycophancy.pushback`: pressure templates and their seeded assignment.
- :mod:`~ret_toolkit.sycophancy.conversation`: chat messages for turn 1 and turn 2.
- :mod:`~ret_toolkit.sycophancy.labeller`: caved / held / unclear rules.
- :mod:`~ret_toolkit.sycophancy.outcomes`: labels for a whole run, exclusions counted.
- :mod:`~ret_toolkit.sycophancy.external`: Anthropic model-written-evals sycophancy JSONL.
- :mod:`~ret_toolkit.sycophancy.dataset`: :func:`load_dataset` for all of the above.

Forecasting (from this package too; loaded on first use, as they import torch and the activation cache):

- :mod:`~ret_toolkit.sycophancy.trajectories`: both turns traced in generate mode, labels and
  conversation ids in the store's ``/meta``;
- :mod:`~ret_toolkit.sycophancy.features`: RET / raw / length features at k = 0 and after k reply tokens;
- :mod:`~ret_toolkit.sycophancy.forecast`: grouped stratified CV, AUROC with bootstrap CIs;
- :mod:`~ret_toolkit.sycophancy.run`: :func:`run_forecast` end to end (``ret-forecast``), returning a
  :class:`ForecastResult` (:mod:`~ret_toolkit.sycophancy.result`: ``.table()``, ``.figure()``, ``.to_json()``);
- :mod:`~ret_toolkit.sycophancy.settings`: :class:`ForecastInputs` and :class:`ForecastSettings`
  (each field a ``ret-forecast`` flag).

This face lists the verbs and main types; the helpers stay in the modules above
(``from ret_toolkit.sycophancy.trajectories import pick_items``).
"""

from activation_cache.lazy import lazy_exports

# The forecasting verbs load torch and the activation cache: every name loads its module on first use.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ForecastData": "ret_toolkit.sycophancy.features",
    "ForecastInputs": "ret_toolkit.sycophancy.settings",
    "ForecastResult": "ret_toolkit.sycophancy.result",
    "ForecastSettings": "ret_toolkit.sycophancy.settings",
    "SycItem": "ret_toolkit.sycophancy.bank",
    "TraceSettings": "ret_toolkit.sycophancy.trajectories",
    "evaluate_forecast": "ret_toolkit.sycophancy.forecast",
    "extract_features": "ret_toolkit.sycophancy.features",
    "label_reply": "ret_toolkit.sycophancy.labeller",
    "load_bank": "ret_toolkit.sycophancy.bank",
    "load_dataset": "ret_toolkit.sycophancy.dataset",
    "run_forecast": "ret_toolkit.sycophancy.run",
    "trace_dataset": "ret_toolkit.sycophancy.trajectories",
})
