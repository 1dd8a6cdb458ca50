"""Sycophancy conversations through the activation cache in generate mode (docs/architecture.md §3.5).

Two-turn items (:class:`~ret_toolkit.sycophancy.bank.SycItem`)::

    turn 1  [user: question]                                  -> first answer   (turn1.h5)
            label first answers; wrong / unclear ones are excluded and counted
    turn 2  [user: question, assistant: first answer,
             user: pushback]                                  -> reply          (turn2.h5)
            label replies: caved / held / unclear

Multiple-choice items (Anthropic format, :class:`~ret_toolkit.sycophancy.external.ChoiceItem`)
have one turn: ``[user: question with choices] -> reply`` (``choice.h5``), labelled caved when
the chosen option is the sycophantic one.

Both turns are traced by :func:`activation_cache.extraction.extract` (generate mode, chat
template): the *forecasting store* (turn2.h5 / choice.h5) holds, per sequence, the prompt
tokens up to the end of the pushback and the first ``max_new_tokens`` reply tokens, with
the hidden states of the chosen layers. After labelling, :func:`activation_cache.annotate.add_meta`
adds to its ``/meta``:

- ``label``: ``"caved"`` / ``"held"`` / ``"unclear"``;
- ``caved``: ``"1"`` (caved), ``"0"`` (held) or ``""`` (unclear: excluded from forecasting).

The prompt records already carry ``conversation_id`` (the item id: every pushback variant of
an item shares its first turn, so cross-validation groups by it), ``turn_start`` (token index
where the last user message starts, for features over the pushback turn), the item's fields
and the pushback template. The prompts are passed to the extraction in memory (no prompt
files are written). Rerunning with the same settings resumes (or reuses) both stores; a store
with another extraction config is refused unless ``TraceSettings.overwrite``, which re-traces it.

Under torchrun (``rank`` from :func:`activation_cache.distributed.detect_rank`) every
rank traces its shard of each turn (``turn1.shards/``, ``turn2.shards/``), rank 0
merges them, and all ranks read the merged turn 1 before building turn 2. Only
rank 0 labels and annotates the stores. Sequences, tokens and labels equal a single
process's (hidden states up to float16 rounding where a shard starts inside a batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from activation_cache import schema
from activation_cache.annotate import add_meta
from activation_cache.distributed import extract_distributed, shard_config
from activation_cache.errors import InputError
from activation_cache.extraction import ExtractConfig, extract, prepare, resolved, store_config
from activation_cache.ranks import Rank, barrier, require_torchrun
from activation_cache.reader import TrajectoryStore
from ret_toolkit.sycophancy.conversation import first_turn, second_turn_record
from ret_toolkit.sycophancy.dataset import is_two_turn
from ret_toolkit.sycophancy.external import choice_messages
from ret_toolkit.sycophancy.labeller import answer_correct
from ret_toolkit.sycophancy.outcomes import (
    EXCLUSION_REASONS,
    Outcomes,
    label_choices,
    label_conversations,
)
from ret_toolkit.sycophancy.pushback import TEMPLATES, assign_template
from ret_toolkit.sycophancy.settings import PUSHBACK_MODES

log = logging.getLogger(__name__)

__all__ = ["TraceSettings", "TraceResult", "trace_dataset", "trace_first_turn", "last_turn_start",
           "pick_items", "read_replies", "PUSHBACK_MODES"]


@dataclass(frozen=True)
class TraceSettings:
    """How conversations are generated and stored.

    Attributes:
        max_new_tokens: reply tokens generated per turn (greedy); the forecasting store keeps
            all of them, so it must be >= the largest k of the forecast (16 by default).
        pushbacks: ``"seeded"``: one pushback template per item (chosen from ``seed``);
            ``"all"``: every template for every item (more sequences per conversation).
        seed: pushback assignment seed.
        batch_size: sequences per traced batch.
        dtype: storage dtype of hidden states (``auto``: see :mod:`activation_cache.dtype_choice`).
        compression: HDF5 compression of the stores (None, ``lzf`` or ``gzip``).
        overwrite: re-trace a store that was extracted with another config (other items,
            model, layers, settings) instead of refusing it. A store with the same config
            is resumed or reused either way (greedy tracing would give the same sequences).
    """

    max_new_tokens: int = 40
    pushbacks: str = "seeded"
    seed: int = 0
    batch_size: int = 16
    dtype: str = "auto"
    compression: str | None = None
    overwrite: bool = False


@dataclass
class TraceResult:
    """Where the trajectories are and what was kept.

    Attributes:
        store: the forecasting store (turn2.h5 or choice.h5), labels in ``/meta``.
        first_store: turn1.h5 (None for choice items).
        n_items: items traced.
        n_variants: forecasting sequences per item that passes turn 1 (pushback templates).
        labels: prompt id -> "caved" / "held" / "unclear", in store order.
        exclusions: reason -> count, in units of candidate sequences (item x variant); every
            reason of :data:`~ret_toolkit.sycophancy.outcomes.EXCLUSION_REASONS` present.
        first_turn: {"correct", "wrong", "unclear"} counts of first answers (items; empty for
            choice items).
        by_template: pushback template -> {"n" (items that passed turn 1), "kept", "caved",
            "second_unclear", "caving_rate", "exclusion_rate"}: exclusions differ by template,
            so a forecast's labels do too (empty for choice items).
    """

    store: Path
    first_store: Path | None
    n_items: int
    n_variants: int
    labels: dict[str, str] = field(default_factory=dict)
    exclusions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXCLUSION_REASONS, 0))
    first_turn: dict[str, int] = field(default_factory=dict)
    by_template: dict[str, dict] = field(default_factory=dict)

    @property
    def n_candidates(self) -> int:
        return self.n_items * self.n_variants

    @property
    def n_kept(self) -> int:
        return sum(v != "unclear" for v in self.labels.values())

    @property
    def n_caved(self) -> int:
        return sum(v == "caved" for v in self.labels.values())

    @property
    def n_excluded(self) -> int:
        return sum(self.exclusions.values())

    def summary(self) -> dict:
        """JSON-ready counts (the ``data`` part of forecast.json)."""
        kept = self.n_kept
        return {"n_items": self.n_items, "n_pushbacks_per_item": self.n_variants,
                "n_candidates": self.n_candidates, "n_sequences": len(self.labels), "n_kept": kept,
                "n_excluded": self.n_excluded, "n_positive": self.n_caved, "n_negative": kept - self.n_caved,
                "caving_rate": self.n_caved / kept if kept else float("nan"),
                "exclusions": dict(self.exclusions), "first_turn": dict(self.first_turn),
                "by_template": {k: dict(v) for k, v in self.by_template.items()}}


def template_counts(outcomes: Outcomes, n: int) -> dict:
    """Counts of one pushback template over the ``n`` items that passed turn 1 (see ``TraceResult.by_template``)."""
    unclear = outcomes.counts["second_unclear"]
    return {"n": n, "kept": outcomes.n_kept, "caved": outcomes.n_caved, "second_unclear": unclear,
            "caving_rate": outcomes.caved_rate, "exclusion_rate": unclear / n if n else float("nan")}


def pick_items(items: Sequence, n: int | None) -> list:
    """``n`` items spread evenly over ``items`` (every k-th, so all kinds stay represented); all if None."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def last_turn_start(messages: Sequence[dict], tokenizer) -> int:
    """Token index where the last message starts once ``messages`` are rendered and tokenised
    the way :func:`activation_cache.extraction.prepare` does (chat template, no extra special tokens).

    0 for a single message or when the rendered earlier turns are not a token prefix of the
    whole conversation (a template that rewrites earlier turns).
    """
    if len(messages) < 2:
        return 0
    full = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    prefix = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=False)
    if not full.startswith(prefix):
        return 0
    ids_full = tokenizer(full, add_special_tokens=False)["input_ids"]
    ids_prefix = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    return len(ids_prefix) if ids_full[: len(ids_prefix)] == ids_prefix else 0


def read_replies(store_path: str | Path, tokenizer) -> dict[str, str]:
    """prompt id -> decoded generated text (special tokens skipped, stripped), in store order."""
    with TrajectoryStore(store_path) as st:
        ids = st.meta_column("prompt_id")
        return {pid: tokenizer.decode(st.tokens(s)[st.generated(s)].tolist(), skip_special_tokens=True).strip()
                for s, pid in enumerate(ids)}


def _store_matches(cfg: ExtractConfig, loaded) -> bool:
    """Whether the store at ``cfg.out`` was extracted with ``cfg`` (read only; False if unreadable)."""
    try:
        with schema.open_h5(cfg.out, "r") as f:
            schema.check_is_store(f, cfg.out)
            stored = schema.read_config(f)
    except (InputError, OSError, KeyError, ValueError):
        return False
    prep = prepare(cfg, loaded)
    return stored == store_config(resolved(cfg, loaded, prep)[0], loaded, prep)


def _extract(records: list[dict], out_dir: Path, name: str, loaded, model_spec: str | None, layers: str,
             s: TraceSettings, progress: bool, rank: Rank | None = None) -> Path:
    """Trace ``records`` (prompts in memory) with the activation cache in generate mode into ``out_dir/<name>.h5``.

    A store extracted with the same config is resumed or reused. One with another config is
    refused, or with ``s.overwrite`` re-traced. With a torchrun ``rank``, this rank's shard
    is traced and, when every rank returns, the merged store is at the same path.
    """
    cfg = ExtractConfig(prompts=records, out=str(out_dir / f"{name}.h5"), model=model_spec, layers=layers,
                        generate=s.max_new_tokens, batch_size=s.batch_size, dtype=s.dtype, compression=s.compression,
                        chat=True)
    mine = cfg if rank is None else shard_config(cfg, rank)
    if s.overwrite and Path(mine.out).exists() and not _store_matches(mine, loaded):
        log.info("%s: extraction config differs: re-tracing", mine.out)
        cfg.overwrite = True
    if rank is None:
        r = extract(cfg, loaded=loaded, progress=progress)
    else:  # the merged store is at cfg.out when every rank returns
        r = extract_distributed(cfg, rank, loaded=loaded, progress=progress).shard
    log.info("%s: %d sequences, %d tokens (%s)", name, r.n_sequences, r.n_tokens,
             "reused" if r.resumed and r.new_sequences == 0 else f"{r.seconds:.0f} s")
    return Path(cfg.out)


def trace_first_turn(items: Sequence, out_dir: str | Path, loaded, layers: str, settings: TraceSettings = TraceSettings(),
                     model_spec: str | None = None, progress: bool = True,
                     rank: Rank | None = None) -> tuple[Path, dict[str, str]]:
    """Turn 1 of two-turn items: ``(turn1.h5, {item id: first answer})``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [{"id": it.id, "messages": first_turn(it), "conversation_id": it.id, "kind": it.kind,
                "topic": it.topic, "answer": it.answer, "wrong_answer": it.wrong_answer} for it in items]
    path = _extract(records, out_dir, "turn1", loaded, model_spec, layers, settings, progress, rank)
    replies = read_replies(path, loaded.tokenizer)
    barrier(rank)  # every rank has read turn 1 before rank 0 annotates it
    return path, replies


def _variants(item, settings: TraceSettings):
    if settings.pushbacks == "all":
        return [(f"{item.id}~{t.name}", t) for t in TEMPLATES]
    return [(item.id, assign_template(item.id, settings.seed))]


def trace_dataset(items: Sequence, out_dir: str | Path, loaded, layers: str, settings: TraceSettings = TraceSettings(),
                  model_spec: str | None = None, progress: bool = True, rank: Rank | None = None) -> TraceResult:
    """Trace and label ``items`` (all two-turn or all multiple-choice) into ``out_dir``.

    Args:
        items: from :func:`~ret_toolkit.sycophancy.dataset.load_dataset` (unique ids).
        loaded: :class:`activation_cache.models.LoadedModel`.
        layers: layer spec of the stored hidden states (``"15"``, ``"12,15"``).
        model_spec: the model spec, recorded in the stores' configs (resume checks it).
        rank: this process's torchrun rank (module docstring); None for one process.

    Returns:
        :class:`TraceResult`; labels and conversation ids are in the forecasting store's ``/meta``
        (on rank 0; other ranks return the counts of turn 1 and no labels).
    """
    items = list(items)
    if not items:
        raise InputError("no sycophancy items to trace")
    if settings.pushbacks not in PUSHBACK_MODES:
        raise InputError(f"unknown pushback mode {settings.pushbacks!r}: choose {' or '.join(PUSHBACK_MODES)}")
    require_torchrun(rank, "sycophancy tracing")
    if rank is not None and rank.world_size == 1:
        rank = None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    two_turn = [is_two_turn(it) for it in items]
    if all(two_turn):
        return _trace_two_turn(items, out_dir, loaded, layers, settings, model_spec, progress, rank)
    if not any(two_turn):
        return _trace_choice(items, out_dir, loaded, layers, settings, model_spec, progress, rank)
    raise InputError("a dataset must hold either two-turn (bank) items or multiple-choice items, not both")


def _trace_two_turn(items, out_dir, loaded, layers, s, model_spec, progress, rank) -> TraceResult:
    tok = loaded.tokenizer
    first_store, firsts = trace_first_turn(items, out_dir, loaded, layers, s, model_spec, progress, rank)
    # Turn-1 verdicts (the rule label_conversations applies first) decide who gets a second turn;
    # they are the same for every pushback variant.
    verdicts = {it.id: answer_correct(it, firsts[it.id]) for it in items}
    lead = rank is None or rank.rank == 0
    if lead:
        add_meta(first_store, {"first_correct": [_verdict(verdicts[pid]) for pid in firsts]}, replace=True)
    ok = [it for it in items if verdicts[it.id] is True]
    records, variant_of = [], {}
    for it in ok:
        for pid, template in _variants(it, s):
            rec = second_turn_record(it, firsts[it.id], seed=s.seed, template=template)
            rec.update(id=pid, conversation_id=it.id, first_reply=firsts[it.id],
                       turn_start=last_turn_start(rec["messages"], tok))
            records.append(rec)
            variant_of[pid] = (it.id, template.name if s.pushbacks == "all" else "seeded")
    n_variants = len(TEMPLATES) if s.pushbacks == "all" else 1
    result = TraceResult(store=out_dir / "turn2.h5", first_store=first_store, n_items=len(items), n_variants=n_variants,
                         first_turn={"correct": sum(v is True for v in verdicts.values()),
                                     "wrong": sum(v is False for v in verdicts.values()),
                                     "unclear": sum(v is None for v in verdicts.values())})
    result.exclusions["first_wrong"] = result.first_turn["wrong"] * n_variants
    result.exclusions["first_unclear"] = result.first_turn["unclear"] * n_variants
    if not records:
        log.warning("no first answer was correct: nothing to push back on")
        return result
    _extract(records, out_dir, "turn2", loaded, model_spec, layers, s, progress, rank)
    if not lead:
        return result
    seconds = read_replies(result.store, tok)
    # One label_conversations call per pushback variant: each item then has one second reply.
    by_variant: dict[str, dict[str, str]] = {}
    for pid, reply in seconds.items():
        item_id, variant = variant_of[pid]
        by_variant.setdefault(variant, {})[item_id] = reply
    outcomes: dict[str, Outcomes] = {v: label_conversations(ok, firsts, replies) for v, replies in by_variant.items()}
    for pid in seconds:
        item_id, variant = variant_of[pid]
        result.labels[pid] = outcomes[variant].labels.get(item_id, "unclear")
    result.exclusions["second_unclear"] = sum(o.counts["second_unclear"] for o in outcomes.values())
    result.by_template = {v: template_counts(o, len(ok)) for v, o in outcomes.items()}
    _annotate(result)
    return result


def _trace_choice(items, out_dir, loaded, layers, s, model_spec, progress, rank) -> TraceResult:
    records = [{"id": it.id, "messages": choice_messages(it), "conversation_id": it.id, "kind": it.kind,
                "sycophantic": ",".join(it.sycophantic), "other": ",".join(it.other), "source": it.source,
                "turn_start": 0} for it in items]
    path = _extract(records, out_dir, "choice", loaded, model_spec, layers, s, progress, rank)
    result = TraceResult(store=path, first_store=None, n_items=len(items), n_variants=1)
    if rank is not None and rank.rank != 0:
        return result
    replies = read_replies(path, loaded.tokenizer)
    outcomes = label_choices(items, replies)
    result.labels = {pid: outcomes.labels.get(pid, "unclear") for pid in replies}
    result.exclusions["choice_unclear"] = outcomes.counts["choice_unclear"]
    _annotate(result)
    return result


def _verdict(v: bool | None) -> str:
    return "unclear" if v is None else "true" if v else "false"


def _annotate(result: TraceResult) -> None:
    """Labels into the forecasting store's /meta (the rows are in prompt-id order of ``labels``)."""
    with TrajectoryStore(result.store) as st:
        order = st.meta_column("prompt_id")
    if order != list(result.labels):
        raise RuntimeError(f"{result.store}: sequence order does not match the labels")
    labels = [result.labels[p] for p in order]
    add_meta(result.store, {"label": labels,
                            "caved": [{"caved": "1", "held": "0"}.get(x, "") for x in labels]}, replace=True)
