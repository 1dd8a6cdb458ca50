"""Seeded synthetic tasks for studying planning in small GPT models.

- :class:`PathTask` (``"pathfinding"``): find a start-to-goal path in an edge list with two
  correct routes and a dead-end decoy; :func:`path_choice` says which route an answer took.
- :class:`GrammarTask` (``"grammar"``): finish a sentence of a PCFG (:data:`DEFAULT_GRAMMAR`
  or any :class:`PCFG`); answers are checked by an Earley recognizer.

Texts are whitespace-separated words; :func:`task_tokenizer` turns a task's :meth:`Task.vocab`
into a word-level ``transformers`` tokenizer, and :func:`write_prompts_jsonl` writes prompts
with their meta for ``activation_cache.prompts.read_prompts``.
"""

from ret_toolkit.tasks.base import Task, TaskSample, prompt_records, write_prompts_jsonl
from ret_toolkit.tasks.grammar import DEFAULT_GRAMMAR, PCFG, GrammarTask
from ret_toolkit.tasks.pathfinding import PathTask, parse_path_prompt, path_choice
from ret_toolkit.tasks.tokenizer import task_tokenizer

__all__ = ["DEFAULT_GRAMMAR", "PCFG", "GrammarTask", "PathTask", "Task", "TaskSample", "parse_path_prompt",
           "path_choice", "prompt_records", "task_tokenizer", "write_prompts_jsonl"]
