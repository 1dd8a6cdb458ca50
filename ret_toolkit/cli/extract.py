"""``ret-extract``: trace hidden-state trajectories into an HDF5 store.

    ret-extract --prompts reasoning --out traj.h5 --generate 32
    ret-extract --prompts my.jsonl --out shard0.h5 --num-shards 4 --shard-index 0
    ret-extract merge traj.h5 shard0.h5 shard1.h5 shard2.h5 shard3.h5
    ret-extract info traj.h5

Exit status: 0 on success, 2 on bad input (one-line message, no traceback),
130 when interrupted (the committed part stays; rerun the command to resume).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from activation_cache.extract_config import ExtractConfig
from ret_toolkit.cli.base import OneLineParser, run_cli, say
from ret_toolkit.cli.flags import settings_from, settings_parser

#: The settings dataclasses whose fields are this command's flags (in --help order).
SETTINGS = (ExtractConfig,)
#: Flags of how ret-extract runs, not settings of the extraction.
COMMAND_FLAGS = ("distributed", "dry_run", "quiet")


def parser() -> argparse.ArgumentParser:
    p = settings_parser("ret-extract", "Trace residual-stream hidden states into an HDF5 trajectory store. "
                      "Subcommands: 'merge OUT SHARD...' joins shards; 'info STORE' prints a summary.", SETTINGS)
    p.add_argument("--distributed", action="store_true",
                   help="take this process's shard from SLURM (srun: SLURM_PROCID/SLURM_NTASKS; job arrays: "
                        "SLURM_ARRAY_TASK_ID/COUNT); under torchrun this is automatic. Shards go to OUT_STEM.shards/, "
                        "the rank that finds them all complete merges them into --out")
    p.add_argument("--dry-run", action="store_true", help="print the storage plan (bytes per token, estimated size) and exit")
    return p


def _extract(argv: Sequence[str]) -> int:
    a = parser().parse_args(argv)
    cfg = settings_from(ExtractConfig, a)
    from activation_cache.distributed import detect_rank, extract_distributed
    from activation_cache.extraction import extract, plan

    rank = detect_rank(a.distributed)
    if a.dry_run:
        if rank is None or rank.rank == 0:
            print(plan(cfg).describe())
        return 0
    if rank is None:
        _print_written(extract(cfg, progress=not a.quiet))
        return 0
    d = extract_distributed(cfg, rank, progress=not a.quiet and rank.rank == 0)  # one progress bar, not N
    _print_written(d.shard, f"rank {rank.rank}/{rank.world_size}: ")
    if d.merged is not None:
        say(f"rank {rank.rank}/{rank.world_size}: all {rank.world_size} shards complete: wrote {d.merged}: "
            f"virtual store over {rank.world_size} shards")
    return 0


def _print_written(r, prefix: str = "") -> None:
    what = "resumed, " if r.resumed else ""
    say(f"{prefix}wrote {r.path}: {r.n_sequences} sequences, {r.n_tokens} tokens ({what}{r.new_tokens} new tokens "
        f"in {r.seconds:.1f} s, {r.tokens_per_s:.0f} tok/s)")


def _merge(argv: Sequence[str]) -> int:
    from activation_cache.merge import merge_shards

    p = OneLineParser(prog="ret-extract merge", description="Join complete shards into one virtual store (no copy).")
    p.add_argument("out")
    p.add_argument("shards", nargs="+")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    out = merge_shards(a.out, a.shards, overwrite=a.overwrite)
    print(f"wrote {out}: virtual store over {len(a.shards)} shards")
    return 0


def _info(argv: Sequence[str]) -> int:
    from activation_cache.reader import open_store

    p = OneLineParser(prog="ret-extract info", description="Summarise a trajectory store.")
    p.add_argument("store")
    a = p.parse_args(argv)
    with open_store(a.store) as s:
        n_gen = int(s.h5["generated"][: s.n_tokens].sum())
        print(repr(s))
        print(f"generated tokens: {n_gen}; layers: {', '.join(s.layers)}")
        print(f"meta fields: {', '.join(s.meta_fields)}")
        if s.model_dtype:  # format 2 on
            why = f" ({s.dtype_choice})" if s.dtype_choice and s.dtype_choice != "as asked" else ""
            print(f"model ran in {s.model_dtype} on {s.device}; hidden states stored as {s.dtype}{why}")
        if s.n_sequences and s.tokenizer is not None:
            print(f"first sequence: {s.text(0)!r}")
        stats = s.stats_lines()
        if stats:
            print(f"running statistics over {s.n_tokens} rows (standardisation reads them):")
            print("\n".join(f"  {line}" for line in stats))
        elif s.n_tokens:
            print("no running statistics (written before the store kept them; resuming or re-extracting adds them)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = {"merge": _merge, "info": _info}.get(argv[0] if argv else "")
    if sub is not None:
        return run_cli(f"ret-extract {argv[0]}", lambda: sub(argv[1:]))
    return run_cli("ret-extract", lambda: _extract(argv))


if __name__ == "__main__":
    sys.exit(main())
