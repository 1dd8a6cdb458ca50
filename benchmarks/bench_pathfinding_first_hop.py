"""Does a path-finding model read the goal? First-hop probabilities against the goal-blind baseline.

Every failure of our path-finding models is the first hop (the rest of the path is a
single edge lookup from the previous node). This diagnostic asks, on held-out graphs,
how much next-token probability a trained model puts on each successor of the start
after the prompt and the start node ("... q s g p s"):

  * goal query:  the real prompt; the two correct first hops should win;
  * decoy query: the same graph and edge order, goal replaced by the decoy's dead end;
    a model that reads the goal moves its mass to the decoy's first hop.

Baseline in the same run: a goal-blind model spreads its mass evenly over the three
successors of ``s`` (correct mass 2/3, decoy 1/3, and no change between the queries).
Prints the table and the ratio to that baseline; ends with
``pathfinding_first_hop_correct_mass: <value>``.

    .venv/bin/python benchmarks/bench_pathfinding_first_hop.py --model runs/task/task/version_0/model
Writes benchmarks/results/bench_pathfinding_first_hop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from activation_cache import load_model  # noqa: E402
from ret_toolkit.tasks import PathTask, TaskSample  # noqa: E402


def with_goal(sample: TaskSample, goal: str) -> str:
    """The sample's prompt with the query's goal replaced, followed by the start node."""
    words = sample.prompt.split()
    words[-2] = goal
    return " ".join([*words, sample.meta["start"]])


@torch.no_grad()
def first_hop_mass(model, tokenizer, prompts: list[str], correct: list[list[str]], decoy: list[str]) -> np.ndarray:
    """(n, 2): next-token probability on the correct first hops (summed) and on the decoy's."""
    out = np.zeros((len(prompts), 2))
    for i, text in enumerate(prompts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        p = model(input_ids=ids).logits[0, -1].float().softmax(-1)
        ids_of = tokenizer.convert_tokens_to_ids
        out[i] = float(sum(p[ids_of(w)] for w in correct[i])), float(p[ids_of(decoy[i])])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model directory from `ret-train task` (path-finding)")
    ap.add_argument("--path-nodes", type=int, default=4)
    ap.add_argument("--n-node-tokens", type=int, default=50)
    ap.add_argument("--n", type=int, default=400, help="held-out graphs")
    ap.add_argument("--seed", type=int, default=1001)
    args = ap.parse_args()

    loaded = load_model(args.model)
    task = PathTask(args.path_nodes, args.n_node_tokens)
    samples = task.samples(args.n, args.seed)
    paths = [{k: json.loads(s.meta[k]) for k in ("path1", "path2", "decoy")} for s in samples]
    correct = [[p["path1"][1], p["path2"][1]] for p in paths]
    decoy_hop = [p["decoy"][1] for p in paths]
    goal = first_hop_mass(loaded.model.eval(), loaded.tokenizer, [with_goal(s, s.meta["goal"]) for s in samples],
                          correct, decoy_hop)
    swapped = first_hop_mass(loaded.model, loaded.tokenizer,
                             [with_goal(s, p["decoy"][-1]) for s, p in zip(samples, paths)], correct, decoy_hop)

    blind = (2 / 3, 1 / 3)
    rows = [("goal query", goal), ("decoy query", swapped)]
    print(f"{'':<12} {'correct mass':>13} {'decoy mass':>11}   goal-blind baseline: {blind[0]:.3f} / {blind[1]:.3f}")
    for name, m in rows:
        print(f"{name:<12} {m[:, 0].mean():>13.3f} {m[:, 1].mean():>11.3f}")
    shift = float(swapped[:, 1].mean() - goal[:, 1].mean())
    correct_mass = float(goal[:, 0].mean())
    print(f"correct mass / goal-blind baseline: {correct_mass / blind[0]:.3f}; decoy mass shift when the goal "
          f"is the decoy's end: {shift:+.3f} (0 = goal ignored)")
    report("bench_pathfinding_first_hop", "pathfinding_first_hop_correct_mass", correct_mass, {
        "model": args.model, "n": args.n, "path_nodes": args.path_nodes, "seed": args.seed,
        "goal_query": {"correct": correct_mass, "decoy": float(goal[:, 1].mean())},
        "decoy_query": {"correct": float(swapped[:, 0].mean()), "decoy": float(swapped[:, 1].mean())},
        "goal_blind_baseline": {"correct": blind[0], "decoy": blind[1]},
        "ratio_to_baseline": correct_mass / blind[0], "decoy_mass_shift": shift,
    })


if __name__ == "__main__":
    main()
