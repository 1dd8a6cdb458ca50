"""``ret-vq-codes``: encode a store's blocks with a trained VQ checkpoint.

    ret-vq-codes --ckpt runs/vq/vq/version_0/checkpoints/last.ckpt --store traj.h5 --out prefix_codes.h5
    # the same single-token model, applied 3 tokens after the anchor:
    ret-vq-codes --ckpt token.ckpt --store traj.h5 --out t3.h5 --start 3 --stop 4 --align -8:10

Writes an HDF5 codes file (``/codes``, ``/sequence``, ``/anchor``); files made
with the same anchors and alignment line up row by row. The file records the
settings that made it; an existing ``--out`` made with other settings (or not
a codes file) is refused before anything is computed, unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ret_toolkit.cli.base import run_cli
from ret_toolkit.cli.flags import settings_from, settings_parser
from ret_toolkit.vq.settings import CodesSettings

#: The settings dataclasses whose fields are this command's flags (in --help order).
SETTINGS = (CodesSettings,)
#: Flags of how ret-vq-codes runs, not settings of the codes.
COMMAND_FLAGS = ("quiet",)


def parser() -> argparse.ArgumentParser:
    return settings_parser("ret-vq-codes", __doc__.split("\n\n")[0], SETTINGS)


def _run(argv: Sequence[str]) -> int:
    a = parser().parse_args(argv)
    s = settings_from(CodesSettings, a)
    from ret_toolkit.vq.codes import store_codes

    print(f"ret-vq-codes: {store_codes(s, progress=not a.quiet)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-vq-codes", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
