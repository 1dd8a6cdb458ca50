"""``ret-macro``: macrostates from a trained RET checkpoint and a store.

    ret-macro --ckpt runs/macro/.../last.ckpt --store traj.h5 --out macro_out --k 12

Writes ``macrostates.h5`` (z and group per token), ``ret_macro.ckpt`` (the
checkpoint with its k-means centroids), ``summary.json``, ``metrics.json``
(held-out evaluation against the baselines) and ``report.html``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ret_toolkit.cli.base import OneLineParser, run_cli


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ret-macro", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="RET checkpoint from ret-train macro")
    p.add_argument("--store", required=True, help="trajectory store (same model and layers as the checkpoint)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--k", type=int, default=12, help="number of macrostates (k-means clusters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run with other settings in --out")
    p.add_argument("--quiet", action="store_true")
    return p


def _run(argv: Sequence[str]) -> int:
    from ret_toolkit.macro.pipeline import build_macrostates

    a = parser().parse_args(argv)
    r = build_macrostates(a.ckpt, a.store, a.out, k=a.k, seed=a.seed, progress=not a.quiet, report=not a.no_report,
                          overwrite=a.overwrite)
    print(f"ret-macro: {a.out}: {r.headline()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-macro", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
