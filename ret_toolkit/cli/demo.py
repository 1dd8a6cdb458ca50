"""``ret-demo --out DIR [--quick]``: the main job on the embedded model (see ret_toolkit.demo)."""

from __future__ import annotations

import sys
from typing import Sequence

from ret_toolkit.cli.base import (OneLineParser, add_chat_template_argument, add_placement_arguments,
                                  add_storage_arguments, run_cli, storage)


def parser() -> OneLineParser:
    p = OneLineParser(prog="ret-demo", description="Extract -> train RET -> macrostates -> evaluation -> report.html + metrics.json")
    p.add_argument("--out", default=None, help="output directory (default demo_out, or demo_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="small run: 72 prompts, 3 epochs (about a minute on 2 CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of a demo run with other settings in --out")
    p.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_chat_template_argument(p)
    add_storage_arguments(p)
    add_placement_arguments(p)
    return p


def _run(argv: Sequence[str]) -> int:
    from ret_toolkit.demo import run_demo
    from ret_toolkit.macro.pipeline import format_metrics

    a = parser().parse_args(argv)
    out = a.out or ("demo_quick" if a.quick else "demo_out")
    m = run_demo(out, quick=a.quick, model_spec=a.model, progress=not a.quiet, overwrite=a.overwrite,
                 device=a.device, model_dtype=a.model_dtype, device_map=a.device_map, chat_template=a.chat_template,
                 **storage(a))
    print(format_metrics(m))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-demo", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
