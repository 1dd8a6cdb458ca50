"""Does a path-finding model read the goal? The goal-swap diagnostic on its first hop.

After the prompt and the start node (``... q s g p s``) the model's next token is
the first hop. On held-out graphs this reads the next-token probability mass

  * on the two correct first hops and on the decoy's, for the real query, and
  * the same after the goal is swapped for the decoy's dead end (same graph, same
    edge order): a model that reads the goal moves its mass to the decoy's hop.

A goal-blind model spreads its mass evenly over the three successors of ``s``
(2/3 correct, 1/3 decoy) and does not move: the *shift* (decoy mass under the
swapped query minus under the real one) is 0. A model "uses the goal" when the
shift's bootstrap CI lies above :data:`GOAL_SHIFT_GATE` (0.2).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from ret_toolkit.info import bootstrap_mean_ci
from ret_toolkit.planning.decode import right_padded
from ret_toolkit.tasks import TaskSample

__all__ = ["GOAL_SHIFT_GATE", "GoalSwap", "goal_swap"]

#: the shift's CI must lie above this for a model to count as using the goal
GOAL_SHIFT_GATE = 0.2


@dataclass(frozen=True)
class GoalSwap:
    """First-hop masses (probabilities, 0..1, means over graphs) with 95 % bootstrap CIs.

    Attributes:
        n: held-out graphs.
        correct, decoy: mass on the correct first hops (summed) / on the decoy's, real query.
        correct_swapped, decoy_swapped: the same with the goal swapped for the decoy's end.
        shift: ``decoy_swapped - decoy`` (paired per graph), with ``shift_ci``.
        uses_goal: ``shift_ci[0] > GOAL_SHIFT_GATE``.
    """

    n: int
    correct: float
    correct_ci: tuple[float, float]
    decoy: float
    decoy_ci: tuple[float, float]
    correct_swapped: float
    decoy_swapped: float
    shift: float
    shift_ci: tuple[float, float]
    uses_goal: bool

    def to_json(self) -> dict:
        return {**asdict(self), "gate": GOAL_SHIFT_GATE, "goal_blind": {"correct": 2 / 3, "decoy": 1 / 3}}

    def table(self) -> str:
        lo, hi = self.shift_ci
        return (f"first-hop mass, correct {self.correct:.3f} [{self.correct_ci[0]:.3f}, {self.correct_ci[1]:.3f}] "
                f"decoy {self.decoy:.3f}; goal swapped: correct {self.correct_swapped:.3f} decoy {self.decoy_swapped:.3f}; "
                f"shift {self.shift:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                f"({'uses the goal' if self.uses_goal else 'goal not shown to matter'}; goal-blind 0.667 / 0.333 / +0)")


def swapped_prompt(sample: TaskSample, goal: str, start: str | None = None) -> str:
    """The sample's prompt with the query's goal replaced, followed by the start node (or ``start``:
    the mask a teacherless model reads there)."""
    words = sample.prompt.split()
    words[-2] = goal
    return " ".join([*words, sample.meta["start"] if start is None else start])


@torch.no_grad()
def first_hop_mass(model, tokenizer, prompts: Sequence[str], correct: Sequence[Sequence[str]],
                   decoy: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(n, 2): next-token probability after each prompt on its correct hops (summed) and its decoy hop."""
    out = np.zeros((len(prompts), 2))
    ids_of = tokenizer.convert_tokens_to_ids
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        enc = [tokenizer(p)["input_ids"] for p in prompts[i:i + batch_size]]
        ids, att = right_padded(enc, tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits
        last = torch.tensor([len(e) - 1 for e in enc], device=device)
        p = logits[torch.arange(len(enc), device=device), last].float().softmax(-1).cpu()
        for b in range(len(enc)):
            j = i + b
            out[j] = float(p[b, ids_of(list(correct[j]))].sum()), float(p[b, ids_of(decoy[j])])
    return out


def goal_swap(model, tokenizer, samples: Sequence[TaskSample], n_boot: int = 2000, seed: int = 0,
              teacherless: bool = False) -> GoalSwap:
    """The goal-swap diagnostic of a forward path-finding model on held-out ``samples``.

    Args:
        model: a ``transformers`` causal LM trained on path-finding (``ret-train task``).
        tokenizer: its word-level tokenizer.
        samples: held-out :class:`~ret_toolkit.tasks.PathTask` samples (forward targets).
        n_boot, seed: bootstrap resamples of the graphs, and their seed.
        teacherless: the model was trained on masked answer inputs: the start node's
            position holds the mask (``<pad>``), as in training.
    """
    if not samples:
        raise ValueError("goal_swap needs at least one sample")
    if any(int(s.meta.get("reverse", 0) or 0) for s in samples):
        raise ValueError("goal_swap reads the first hop from the start; these samples have reversed targets")
    paths = [{k: json.loads(s.meta[k]) for k in ("path1", "path2", "decoy")} for s in samples]
    correct = [[p["path1"][1], p["path2"][1]] for p in paths]
    decoy_hop = [p["decoy"][1] for p in paths]
    was_training = model.training
    model.eval()
    start = tokenizer.pad_token if teacherless else None
    real = first_hop_mass(model, tokenizer, [swapped_prompt(s, s.meta["goal"], start) for s in samples], correct,
                          decoy_hop)
    swap = first_hop_mass(model, tokenizer, [swapped_prompt(s, p["decoy"][-1], start) for s, p in zip(samples, paths)],
                          correct, decoy_hop)
    model.train(was_training)
    shift = swap[:, 1] - real[:, 1]

    def ci(x: np.ndarray) -> tuple[float, float]:
        lo, hi = bootstrap_mean_ci(x, n_boot=n_boot, seed=seed)
        return float(lo), float(hi)

    shift_ci = ci(shift)
    return GoalSwap(n=len(samples), correct=float(real[:, 0].mean()), correct_ci=ci(real[:, 0]),
                    decoy=float(real[:, 1].mean()), decoy_ci=ci(real[:, 1]),
                    correct_swapped=float(swap[:, 0].mean()), decoy_swapped=float(swap[:, 1].mean()),
                    shift=float(shift.mean()), shift_ci=shift_ci, uses_goal=shift_ci[0] > GOAL_SHIFT_GATE)
