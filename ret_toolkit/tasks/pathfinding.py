"""Path-finding in a small directed graph with two correct routes and a decoy.

Each sample is a graph made of three paths out of a start node ``s``: two node-disjoint
paths P1, P2 to the goal ``g`` and a decoy D that shares only ``s`` and ends in a dead end.
Because either correct path is accepted, the route the model did *not* take is a natural
target for "does the model represent the alternative plan" analyses (see :func:`path_choice`).

Text format (words)::

    prompt:  e a b  e c d  ...  q s g p      every edge "e a b" (a -> b) in random order,
                                             then the query "q s g" and the answer cue "p"
    target:  s n.. g .                       a correct path's nodes from s to g, then "."
    reversed target (``reverse=True``):  g n.. s .   the same path written backwards

The reversed target is a positive control for training: every step of it, the first
included, is a lookup of the previous node's in-edge (the goal has two, one per correct
path), so a model needs no plan to solve it.
"""

from __future__ import annotations

import json

import numpy as np

from ret_toolkit.tasks.base import Task, TaskSample, words_until_stop

__all__ = ["PathTask", "path_choice", "parse_path_prompt", "is_reversed", "EDGE", "QUERY", "ANSWER", "END"]

EDGE, QUERY, ANSWER, END = "e", "q", "p", "."


class PathTask(Task):
    """Find a path from ``s`` to ``g`` given the graph's edge list.

    Args:
        path_nodes: nodes per path, start and goal included (4 = short, 6 = long); >= 3, since
            two 2-node paths would be the same edge ``s -> g``.
        n_node_tokens: size of the node vocabulary ``n0 .. n{N-1}``; at least ``3 * path_nodes``
            (a sample uses ``3 * path_nodes - 3`` distinct nodes).
        extra_edges: random distractor edges among nodes the three paths do not use. They
            touch no path node, so they never add a route from ``s`` to ``g``.
        reverse: write the target path from ``g`` back to ``s`` (the positive control above);
            the scorer then reads the answer backwards.

    meta: ``{"task": "pathfinding", "start": node, "goal": node, "path1", "path2", "decoy":
    JSON lists of nodes, "target_path": 1 or 2, "edges": JSON list of [a, b] in prompt order}``,
    plus ``"reverse": 1`` for a reversed target. Paths in meta always run from ``s``.
    """

    name = "pathfinding"

    def __init__(self, path_nodes: int = 4, n_node_tokens: int = 50, extra_edges: int = 0, reverse: bool = False):
        for arg, value in (("path_nodes", path_nodes), ("n_node_tokens", n_node_tokens),
                           ("extra_edges", extra_edges)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{arg} must be an integer, got {value!r}")
        if path_nodes < 3:
            raise ValueError(f"path_nodes must be >= 3 (start, at least one inner node, goal), got {path_nodes}")
        if n_node_tokens < 3 * path_nodes:
            raise ValueError(f"n_node_tokens ({n_node_tokens}) must be >= 3 * path_nodes ({3 * path_nodes})")
        if extra_edges < 0:
            raise ValueError(f"extra_edges must be >= 0, got {extra_edges}")
        unused = n_node_tokens - self.nodes_per_sample(path_nodes)
        if extra_edges > unused * (unused - 1):
            raise ValueError(f"extra_edges ({extra_edges}) exceeds the {unused * (unused - 1)} directed edges "
                             f"possible among the {unused} nodes the paths leave unused")
        self.path_nodes, self.n_node_tokens = int(path_nodes), int(n_node_tokens)
        self.extra_edges = int(extra_edges)
        self.reverse = bool(reverse)

    @staticmethod
    def nodes_per_sample(path_nodes: int) -> int:
        """Distinct nodes on P1, P2 and D: s, g, 2 x (k - 2) inner nodes and k - 1 decoy nodes."""
        return 3 * path_nodes - 3

    def node_names(self) -> list[str]:
        return [f"n{i}" for i in range(self.n_node_tokens)]

    def vocab(self) -> list[str]:
        return [*self.node_names(), EDGE, QUERY, ANSWER, END]

    def sample(self, rng: np.random.Generator) -> TaskSample:
        k = self.path_nodes
        names = self.node_names()
        order = rng.permutation(self.n_node_tokens)
        used, rest = order[: self.nodes_per_sample(k)], order[self.nodes_per_sample(k):]
        s, g = names[used[0]], names[used[1]]
        inner = [names[i] for i in used[2:]]
        path1 = [s, *inner[: k - 2], g]
        path2 = [s, *inner[k - 2 : 2 * (k - 2)], g]
        decoy = [s, *inner[2 * (k - 2):]]
        edges = [(a, b) for p in (path1, path2, decoy) for a, b in zip(p, p[1:])]
        edges += self._distractors(rng, [names[i] for i in rest])
        edges = [edges[i] for i in rng.permutation(len(edges))]  # order must not give the path away
        target_path = int(rng.integers(1, 3))
        target = path1 if target_path == 1 else path2
        if self.reverse:
            target = target[::-1]

        prompt = [w for a, b in edges for w in (EDGE, a, b)] + [QUERY, s, g, ANSWER]
        meta = {"task": self.name, "start": s, "goal": g, "path1": json.dumps(path1),
                "path2": json.dumps(path2), "decoy": json.dumps(decoy), "target_path": target_path,
                "edges": json.dumps([[a, b] for a, b in edges])}
        if self.reverse:
            meta["reverse"] = 1
        return TaskSample(prompt=" ".join(prompt), target=" ".join([*target, END]), meta=meta)

    def _distractors(self, rng: np.random.Generator, free: list[str]) -> list[tuple[str, str]]:
        """``extra_edges`` distinct directed edges a -> b (a != b) among the ``free`` nodes."""
        if not self.extra_edges:
            return []
        u = len(free)
        # Pair index j encodes (j // (u-1), j % (u-1)), skipping the diagonal, so picks are distinct.
        picks = rng.choice(u * (u - 1), size=self.extra_edges, replace=False)
        out = []
        for j in picks:
            a, b = divmod(int(j), u - 1)
            out.append((free[a], free[b + (b >= a)]))
        return out

    def score(self, sample: TaskSample, output: str) -> bool:
        """True when the output's words (up to ``"."``/``<eos>``, or to the end) are a walk from
        the start to the goal along edges of the prompt. Either correct path passes; the decoy,
        an invented edge, a wrong endpoint or an empty output do not."""
        return _walk(sample, output) is not None


def parse_path_prompt(prompt: str) -> tuple[set[tuple[str, str]], str, str]:
    """``(edges, start, goal)`` read back from a path-finding prompt; ValueError if malformed."""
    words = prompt.split()
    if len(words) < 4 or words[-4] != QUERY or words[-1] != ANSWER or (len(words) - 4) % 3:
        raise ValueError(f"not a path-finding prompt (expected 'e a b ... q s g p'): {prompt[:80]!r}")
    body = words[:-4]
    if any(w != EDGE for w in body[::3]):
        raise ValueError(f"malformed edge list in path-finding prompt: {prompt[:80]!r}")
    return set(zip(body[1::3], body[2::3])), words[-3], words[-2]


def is_reversed(meta: dict) -> bool:
    """Whether a sample's target runs from the goal back to the start (``meta["reverse"]``)."""
    return bool(int(meta.get("reverse", 0) or 0))


def _walk(sample: TaskSample, output: str) -> list[str] | None:
    """The output's node list, read from start to goal, when it is a valid walk, else None."""
    edges, s, g = parse_path_prompt(sample.prompt)
    nodes, _ = words_until_stop(output)
    if is_reversed(sample.meta):
        nodes = nodes[::-1]
    if len(nodes) < 2 or nodes[0] != s or nodes[-1] != g:
        return None
    if any((a, b) not in edges for a, b in zip(nodes, nodes[1:])):
        return None
    return nodes


def path_choice(sample: TaskSample, output: str) -> int | None:
    """Which correct path the output follows: 1 (``meta["path1"]``), 2 (``meta["path2"]``), or
    None when the output is not a valid path. Meta lists may be JSON strings or lists."""
    nodes = _walk(sample, output)
    if nodes is None:
        return None
    for i in (1, 2):
        path = sample.meta[f"path{i}"]
        if (json.loads(path) if isinstance(path, str) else list(path)) == nodes:
            return i
    return None  # valid walk on neither listed path: only possible with a hand-made graph
