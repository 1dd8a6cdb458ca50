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
  :class:`ForecastResult` (``.table()``, ``.figure()``, ``.to_json()``).
"""

from activation_cache.lazy import lazy_exports
from ret_toolkit.sycophancy.bank import SycItem, load_bank
from ret_toolkit.sycophancy.conversation import first_turn, second_turn
from ret_toolkit.sycophancy.dataset import load_dataset
from ret_toolkit.sycophancy.external import ChoiceItem, read_anthropic_jsonl
from ret_toolkit.sycophancy.labeller import label_reply
from ret_toolkit.sycophancy.outcomes import EXCLUSION_REASONS, Outcomes, label_choices, label_conversations
from ret_toolkit.sycophancy.pushback import TEMPLATES, PushbackTemplate, pushback_text

# The forecasting verbs load torch and the activation cache: on first use.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "TraceSettings": "ret_toolkit.sycophancy.trajectories",
    "trace_dataset": "ret_toolkit.sycophancy.trajectories",
    "pick_items": "ret_toolkit.sycophancy.trajectories",
    "read_replies": "ret_toolkit.sycophancy.trajectories",
    "ForecastData": "ret_toolkit.sycophancy.features",
    "extract_features": "ret_toolkit.sycophancy.features",
    "forecast_position": "ret_toolkit.sycophancy.features",
    "evaluate_forecast": "ret_toolkit.sycophancy.forecast",
    "ForecastSettings": "ret_toolkit.sycophancy.settings",
    "ForecastInputs": "ret_toolkit.sycophancy.settings",
    "run_forecast": "ret_toolkit.sycophancy.run",
    "ForecastResult": "ret_toolkit.sycophancy.result",
    "auroc_table": "ret_toolkit.sycophancy.result",
    "difference_table": "ret_toolkit.sycophancy.result",
}, eager=dict(
    EXCLUSION_REASONS=EXCLUSION_REASONS, TEMPLATES=TEMPLATES, ChoiceItem=ChoiceItem, Outcomes=Outcomes,
    PushbackTemplate=PushbackTemplate, SycItem=SycItem, first_turn=first_turn, label_choices=label_choices,
    label_conversations=label_conversations, label_reply=label_reply, load_bank=load_bank, load_dataset=load_dataset,
    pushback_text=pushback_text, read_anthropic_jsonl=read_anthropic_jsonl, second_turn=second_turn))
