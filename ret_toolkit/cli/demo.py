"""``ret-demo --out DIR [--quick]``: the main job on the embedded model (see ret_toolkit.demo)."""

from __future__ import annotations

import sys
from typing import Sequence

from activation_cache.cli import OneLineParser, run_cli


def _run(argv: Sequence[str]) -> int:
    from ret_toolkit.demo import run_demo

    p = OneLineParser(prog="ret-demo", description="Extract -> train RET -> macrostates -> evaluation -> report.html + metrics.json")
    p.add_argument("--out", default=None, help="output directory (default demo_out, or demo_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="small run: 72 prompts, 3 epochs (about a minute on 2 CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of a demo run with other settings in --out")
    p.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    out = a.out or ("demo_quick" if a.quick else "demo_out")
    m = run_demo(out, quick=a.quick, model=a.model, progress=not a.quiet, overwrite=a.overwrite)
    tc, mi = m["temporal_consistency"], m["token_mi_bits"]
    print(f"held-out: {m['n_heldout_sequences']} sequences, k={m['k']}, effective rank {m['effective_rank']:.2f}")
    print(f"{'method':<14}{'P(same next)':>13}{'run length':>12}{'token MI':>10}{'max occ.':>10}{'closure gap':>13}")
    for name in ("ret", "kmeans_raw", "kmeans_pca", "kmeans_window"):
        gap = m["closure_gap"].get(name)
        print(f"{name:<14}{tc[name]['p_same_next']:>13.3f}{tc[name]['mean_run_length']:>12.2f}{mi[name]:>10.3f}"
              f"{m['group_occupancy_max'][name]:>10.3f}{'—' if gap is None else f'{gap:.3f}':>13}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-demo", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
