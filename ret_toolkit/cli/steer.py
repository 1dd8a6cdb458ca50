"""``ret-steer``: generate with a steering vector or a RET group, optionally closed-loop or as an α sweep.

    ret-steer --vector happy --prompt "Tell me about your day." --alpha 0.5
    ret-steer --ret demo_out --group 3 --prompts reasoning --limit 4 --alpha 0.3
    ret-steer --ret demo_out --group 3 --detect 3 --when out --prompt "What is 7 times 8?"   # closed loop
    ret-steer --ret demo_out --group 3 --prompts reasoning --limit 16 --sweep --alphas 0,0.1,0.2,0.4 --out sweep3
    torchrun --standalone --nproc-per-node 4 --no-python ret-steer --ret demo_out --group 3 --prompts reasoning --sweep --out s4

``--ret DIR`` is a ret-demo / ret-macro output directory (``ret_macro.ckpt``,
``macrostates.h5`` and the store they were made from). ``--group G`` builds the
vector of group G there (group mean minus overall mean at the RET layer, scaled
to the median token norm; ``--save-vector`` keeps it); ``--vector PATH`` uses a
saved one instead. The sweep writes ``sweep.json`` and ``sweep.html`` into
``--out``: share of generated tokens in group G (RET groups of the *unsteered*
model re-reading the text) and perplexity under the unsteered model, per α.
Under torchrun each rank generates whole batches of the prompts on its own
device and rank 0 writes the sweep (with greedy decoding, the same sweep as
one process).

Check, then write: a ``--out`` directory holding a sweep with other settings,
and a ``--save-vector`` path holding another vector (or any other file), are
refused before anything is generated or written, unless ``--overwrite``; the
sweep's files are staged and moved into place when both are complete.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ret_toolkit.cli.base import run_cli
from ret_toolkit.cli.flags import settings_from, settings_parser
from ret_toolkit.steering.settings import GenerationSettings, SteerSettings

#: The settings dataclasses whose fields are this command's flags (in --help order).
SETTINGS = (SteerSettings, GenerationSettings)
#: Flags of how ret-steer runs, not settings of the steering.
COMMAND_FLAGS = ("quiet",)


def parser() -> argparse.ArgumentParser:
    return settings_parser("ret-steer", __doc__.split("\n\n")[0], SETTINGS)


def _run(argv: Sequence[str]) -> int:
    a = parser().parse_args(argv)
    s, g = settings_from(SteerSettings, a), settings_from(GenerationSettings, a)
    from activation_cache.ranks import detect_rank
    from ret_toolkit.steering.run import run_steer

    rank = detect_rank()
    r = run_steer(s, g, progress=not a.quiet, rank=rank)
    if rank is None or rank.rank == 0:  # under torchrun every rank has the sweep; rank 0 reports it
        print("\n".join(r.lines()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-steer", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
