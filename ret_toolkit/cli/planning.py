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

from ret_toolkit.cli.base import run_cli
from ret_toolkit.cli.flags import settings_from, settings_parser
from ret_toolkit.planning.settings import PlanningInputs, ProbeSettings

#: The settings dataclasses whose fields are this command's flags (in --help order).
SETTINGS = (PlanningInputs, ProbeSettings)
#: Flags of how ret-planning runs, not settings of the analysis.
COMMAND_FLAGS = ("quiet",)


def parser() -> argparse.ArgumentParser:
    return settings_parser("ret-planning", __doc__.split("\n\n")[0], SETTINGS)


def _run(argv: Sequence[str]) -> int:
    a = parser().parse_args(argv)
    job, s = settings_from(PlanningInputs, a), settings_from(ProbeSettings, a)
    from ret_toolkit.planning.run import run_planning

    r = run_planning(job, s, progress=not a.quiet)
    print("ret-planning: " + r.table())
    print(f"ret-planning: {job.out}/planning.json, {job.out}/planning.html")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-planning", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
