"""``ret-demo --out DIR [--quick]``: the main job on the embedded model (see ret_toolkit.demo)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ret_toolkit.cli.base import run_cli
from ret_toolkit.cli.flags import settings_from, settings_parser
from ret_toolkit.demo_settings import DemoInputs

#: The settings dataclasses whose fields are this command's flags (in --help order).
SETTINGS = (DemoInputs,)
#: Flags of how ret-demo runs, not settings of the demo.
COMMAND_FLAGS = ("quiet",)


def parser() -> argparse.ArgumentParser:
    return settings_parser("ret-demo", "Extract -> train RET -> macrostates -> evaluation -> report.html + metrics.json",
                           SETTINGS)


def _run(argv: Sequence[str]) -> int:
    a = parser().parse_args(argv)
    job = settings_from(DemoInputs, a)
    from ret_toolkit.demo import run_demo

    print(run_demo(job, progress=not a.quiet).table())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-demo", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
