"""Task accuracy: continue held-out prompts with a task model and score them with the task's scorer.

Path-finding has one right kind of answer, so the model decodes greedily. A grammar has many
grammatical continuations and its recursive rules (``NP -> NP PP``) make greedy decoding of a
well-trained model loop on the most likely expansion until the token budget runs out; grammar
completions are therefore *sampled* (seeded, temperature 1), which is what "the model has
learned the language" means for a PCFG.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ret_toolkit.tasks import Task, TaskSample


def decoding_of(task: Task) -> str:
    """The task's :attr:`Task.decoding` (``"greedy"`` or ``"sample"``)."""
    if task.decoding not in ("greedy", "sample"):
        raise ValueError(f"task {task.name!r} has decoding {task.decoding!r}; use 'greedy' or 'sample'")
    return task.decoding


def max_new_words(task: Task, samples: Sequence[TaskSample]) -> int:
    """Token budget of a completion: the longest reference answer (or sentence) plus 2."""
    longest = getattr(task, "max_words", 0)
    return max([longest, *(len(s.target.split()) for s in samples)]) + 2


@torch.no_grad()
def complete(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, sample: bool = False,
             seed: int = 0, batch_size: int = 128) -> list[str]:
    """Continuations (specials dropped) of ``prompts`` by a ``transformers`` causal LM.

    Prompts are left-padded in batches of ``batch_size``; ``sample`` draws with temperature 1
    from ``torch.manual_seed(seed)`` (restored afterwards), else greedy.
    """
    was_training = model.training
    model.eval()
    outs: list[str] = []
    # Plain temperature-1 sampling: transformers would otherwise apply its default top_k = 50.
    mode = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0) if sample else dict(do_sample=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True).to(model.device)
            new = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **mode)
            outs += tokenizer.batch_decode(new[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    return outs


def right_padded(encoded: Sequence[Sequence[int]], pad_id: int, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` (B, L): token lists right-padded with ``pad_id``, each followed by
    ``extra`` attended ``pad_id`` slots (the masks a teacherless model reads)."""
    n = max(map(len, encoded)) + extra
    ids = torch.full((len(encoded), n), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    for b, e in enumerate(encoded):
        ids[b, :len(e)], att[b, :len(e) + extra] = torch.tensor(list(e)), 1
    return ids, att


@torch.no_grad()
def teacherless_complete(model, tokenizer, prompts: Sequence[str], n_tokens: int, batch_size: int = 128) -> list[str]:
    """Answers of a teacherless model: each prompt followed by ``n_tokens`` ``<pad>`` masks, read in one
    forward pass (the argmax at every answer position), as the model was trained."""
    was_training = model.training
    model.eval()
    mask, outs = tokenizer.pad_token_id, []
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        enc = [tokenizer(p)["input_ids"] for p in prompts[i:i + batch_size]]
        ids, att = right_padded(enc, mask, n_tokens)
        pred = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.argmax(-1).cpu()
        outs += [tokenizer.decode(pred[b, len(e) - 1:len(e) - 1 + n_tokens], skip_special_tokens=False)
                 for b, e in enumerate(enc)]
    model.train(was_training)
    return outs


def is_teacherless(settings: dict) -> bool:
    """Whether task settings (``task.json`` / data hparams) describe teacherless training."""
    return settings.get("corrupt_mode") == "mask" and float(settings.get("corrupt", 0.0)) >= 1.0


def answers_correct(model, tokenizer, task: Task, samples: Sequence[TaskSample], seed: int = 0,
                    teacherless: bool = False) -> list[bool]:
    """Per sample: whether the model's completion (greedy or sampled, as the task decodes; with
    ``teacherless``, :func:`teacherless_complete`) is right."""
    prompts, budget = [s.prompt for s in samples], max_new_words(task, samples)
    if teacherless:
        outs = teacherless_complete(model, tokenizer, prompts, budget)
    else:
        outs = complete(model, tokenizer, prompts, budget, sample=decoding_of(task) == "sample", seed=seed)
    return [task.score(s, o) for s, o in zip(samples, outs)]


def task_accuracy_of(model, tokenizer, task: Task, samples: Sequence[TaskSample], seed: int = 0,
                     teacherless: bool = False) -> dict:
    """``{"n", "accuracy", "decoding"}``: share of ``samples`` whose completion the task's scorer accepts."""
    mode = "teacherless" if teacherless else decoding_of(task)
    if not samples:
        return {"n": 0, "accuracy": float("nan"), "decoding": mode}
    ok = answers_correct(model, tokenizer, task, samples, seed, teacherless)
    return {"n": len(ok), "accuracy": sum(ok) / len(ok), "decoding": mode}
