"""Sycophancy forecasting data (docs/architecture.md §3.5): questions, pushback, conversations, labels.

- :mod:`~ret_toolkit.sycophancy.bank`: :class:`SycItem` and :func:`load_bank` (facts shipped
  as package data, arithmetic and unit conversions generated from a seed).
- :mod:`~ret_toolkit.sycophancy.pushback`: pressure templates and their seeded assignment.
- :mod:`~ret_toolkit.sycophancy.conversation`: chat messages for turn 1 and turn 2.
- :mod:`~ret_toolkit.sycophancy.labeller`: caved / held / unclear rules.
- :mod:`~ret_toolkit.sycophancy.outcomes`: labels for a whole run, exclusions counted.
- :mod:`~ret_toolkit.sycophancy.external`: Anthropic model-written-evals sycophancy JSONL.
- :mod:`~ret_toolkit.sycophancy.dataset`: :func:`load_dataset` for all of the above.

Forecasting (import from the modules; they load torch and the activation cache):

- :mod:`~ret_toolkit.sycophancy.trajectories`: both turns traced in generate mode, labels and
  conversation ids in the store's ``/meta``;
- :mod:`~ret_toolkit.sycophancy.features`: RET / raw / length features at k = 0 and after k reply tokens;
- :mod:`~ret_toolkit.sycophancy.forecast`: grouped stratified CV, AUROC with bootstrap CIs;
- :mod:`~ret_toolkit.sycophancy.run`: :func:`~ret_toolkit.sycophancy.run.run_forecast` end to end
  (``ret-forecast``).
"""

from ret_toolkit.sycophancy.bank import KINDS, SycItem, load_bank, load_facts, read_bank_jsonl, write_bank_jsonl
from ret_toolkit.sycophancy.conversation import first_turn, second_turn, second_turn_record
from ret_toolkit.sycophancy.dataset import is_two_turn, load_dataset
from ret_toolkit.sycophancy.external import (ChoiceItem, choice_messages, chose_sycophantic, chosen_option,
                                            read_anthropic_jsonl)
from ret_toolkit.sycophancy.labeller import (answer_correct, first_answer_correct, label_item, label_reply,
                                            normalise, occurrences)
from ret_toolkit.sycophancy.outcomes import EXCLUSION_REASONS, Outcomes, label_choices, label_conversations
from ret_toolkit.sycophancy.pushback import TEMPLATES, PushbackTemplate, assign_template, get_template, pushback_text

__all__ = [
    "EXCLUSION_REASONS", "KINDS", "TEMPLATES",
    "ChoiceItem", "Outcomes", "PushbackTemplate", "SycItem",
    "answer_correct", "assign_template", "choice_messages", "chose_sycophantic", "chosen_option",
    "first_answer_correct", "first_turn", "get_template", "is_two_turn", "label_choices",
    "label_conversations", "label_item", "label_reply", "load_bank", "load_dataset", "load_facts",
    "normalise", "occurrences", "pushback_text", "read_anthropic_jsonl", "read_bank_jsonl",
    "second_turn", "second_turn_record", "write_bank_jsonl",
]
