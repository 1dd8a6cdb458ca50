"""``ret-macro``: macrostates from a trained RET checkpoint and a store.

    ret-macro --ckpt runs/macro/.../last.ckpt --store traj.h5 --out macro_out --n-macrostates 12

Writes ``macrostates.h5`` (z and group per token), ``ret_macro.ckpt`` (the
checkpoint with its k-means centroids), ``summary.json``, ``metrics.json``
(held-out evaluation against the baselines) and ``report.html``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ret_toolkit.cli.base import run_cli
from ret_toolkit.cli.flags import settings_from, settings_parser
from ret_toolkit.macro.settings import MacroSettings

#: The settings dataclasses whose fields are this command's flags (in --help order).
SETTINGS = (MacroSettings,)
#: Flags of how ret-macro runs, not settings of the macrostates.
COMMAND_FLAGS = ("quiet",)


def parser() -> argparse.ArgumentParser:
    return settings_parser("ret-macro", __doc__.split("\n\n")[0], SETTINGS)


def _run(argv: Sequence[str]) -> int:
    a = parser().parse_args(argv)
    s = settings_from(MacroSettings, a)
    from ret_toolkit.macro.pipeline import build_macrostates

    r = build_macrostates(s.ckpt, s.store, s.out, n_macrostates=s.n_macrostates, seed=s.seed, progress=not a.quiet,
                          report=s.report, overwrite=s.overwrite)
    print(f"ret-macro: {s.out}: {r.headline()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-macro", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
