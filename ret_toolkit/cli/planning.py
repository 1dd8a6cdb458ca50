"""``ret-planning``: horizon, branch-awareness and history analyses of a model trained on a synthetic task.

    ret-train task fit --data.task=pathfinding --data.path_nodes=4
    ret-planning --model runs/task/task/version_0/model --task pathfinding --path-nodes 4 --out plan_short

Writes ``trajectories.h5`` (the traced samples), ``planning.json`` (accuracy, every MI
with its bootstrap CI and permutation-null level) and ``planning.html`` (figures) into
``--out``. Everything is checked before the model is loaded: a directory that holds a
ret-planning run with other settings is refused (exit 2, nothing changed) unless
``--overwrite``. The files are moved into place only when the whole run has succeeded.

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ret_toolkit.cli.base import OneLineParser, add_placement_arguments, add_storage_arguments, run_cli, storage


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ret-planning", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory from ret-train task (or any GPT-style transformers dir)")
    p.add_argument("--task", required=True, choices=["pathfinding", "grammar"])
    p.add_argument("--path-nodes", type=int, default=4, help="path-finding: nodes per path (4 short, 6 long)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--n", type=int, default=2000, help="held-out task samples to trace")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each VQ probe")
    p.add_argument("--max-tau", type=int, default=10)
    p.add_argument("--prefix-positions", type=int, default=4)
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of a ret-planning run with other settings in --out")
    p.add_argument("--quiet", action="store_true")
    add_storage_arguments(p)
    add_placement_arguments(p)
    return p


def _run(argv: Sequence[str]) -> int:
    from ret_toolkit.planning.analysis import ProbeSettings
    from ret_toolkit.planning.run import run_planning

    a = parser().parse_args(argv)
    s = ProbeSettings(prefix_positions=a.prefix_positions, max_tau=a.max_tau, epochs=a.epochs,
                      n_permutations=a.permutations, n_boot=a.bootstrap, seed=a.seed)
    r = run_planning(a.model, a.task, a.out, n=a.n, path_nodes=a.path_nodes, settings=s, progress=not a.quiet,
                     overwrite=a.overwrite, device=a.device, model_dtype=a.model_dtype, device_map=a.device_map,
                     **storage(a))
    print("ret-planning: " + r.table())
    print(f"ret-planning: {a.out}/planning.json, {a.out}/planning.html")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-planning", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
