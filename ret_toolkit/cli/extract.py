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

from ret_toolkit.cli.base import (OneLineParser, add_chat_template_argument, add_placement_arguments,
                                  add_storage_arguments, run_cli, say, storage)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ret-extract", description="Trace residual-stream hidden states into an HDF5 trajectory store. "
                      "Subcommands: 'merge OUT SHARD...' joins shards; 'info STORE' prints a summary.")
    p.add_argument("--model", default=None, help="embedded 'smollm2-135m-instruct' (default), a local transformers dir, a .gguf file, or a hub id (network only when you pass one)")
    p.add_argument("--prompts", required=True, help="a .txt (one prompt a line) or .jsonl file (text or messages), or a built-in set: reasoning, chat")
    p.add_argument("--out", required=True, help="output .h5 file (its directory must exist)")
    p.add_argument("--layers", default="all", help="'all' (default) or indices/ranges like '0,5,10-12', negatives count from the end")
    p.add_argument("--embed", action="store_true", help="also store the embedding output as /hidden/embed")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="generate up to N tokens per prompt and record them too (default 0: prompt only)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default 8)")
    p.add_argument("--batch-tokens", type=int, default=None, metavar="N",
                   help="instead of --batch-size: batches of at most N padded tokens, prompts grouped by length "
                        "(less padding; the store keeps prompt order)")
    p.add_argument("--pipeline", default="auto", choices=["auto", "on", "off"],
                   help="write on a background thread while the model traces the next batch "
                        "(auto, the default: on when the model runs on a GPU)")
    p.add_argument("--max-tokens", type=int, default=512, help="truncate longer prompts (with a warning naming them)")
    p.add_argument("--chat", action="store_true", help="render plain-text prompts through the tokenizer's chat template")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (per batch: seed + first prompt index)")
    p.add_argument("--distributed", action="store_true",
                   help="take this process's shard from SLURM (srun: SLURM_PROCID/SLURM_NTASKS; job arrays: "
                        "SLURM_ARRAY_TASK_ID/COUNT); under torchrun this is automatic. Shards go to OUT_STEM.shards/, "
                        "the rank that finds them all complete merges them into --out")
    p.add_argument("--num-shards", type=int, default=1, help="split the prompts into N contiguous shards ...")
    p.add_argument("--shard-index", type=int, default=0, help="... and extract only this one (0-based)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store instead of resuming it")
    p.add_argument("--dry-run", action="store_true", help="print the storage plan (bytes per token, estimated size) and exit")
    p.add_argument("--block-path", default=None, help="dotted path of the decoder-block ModuleList, for architectures not recognised")
    p.add_argument("--embed-path", default=None, help="dotted path of the token embedding module")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_chat_template_argument(p)
    add_storage_arguments(p)
    add_placement_arguments(p)
    return p


def _extract(argv: Sequence[str]) -> int:
    from activation_cache.distributed import detect_rank, extract_distributed
    from activation_cache.extraction import ExtractConfig, extract, plan

    a = parser().parse_args(argv)
    cfg = ExtractConfig(
        prompts=a.prompts, out=a.out, model=a.model, layers=a.layers, embed=a.embed, generate=a.generate,
        batch_size=a.batch_size, batch_tokens=a.batch_tokens, **storage(a),
        max_tokens=a.max_tokens, chat=a.chat, chat_template=a.chat_template, limit=a.limit, sample=a.sample, temperature=a.temperature, top_p=a.top_p,
        seed=a.seed, num_shards=a.num_shards, shard_index=a.shard_index, overwrite=a.overwrite,
        block_path=a.block_path, embed_path=a.embed_path,
        device=a.device, model_dtype=a.model_dtype, device_map=a.device_map,
        pipeline={"auto": None, "on": True, "off": False}[a.pipeline],
    )
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
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = {"merge": _merge, "info": _info}.get(argv[0] if argv else "")
    if sub is not None:
        return run_cli(f"ret-extract {argv[0]}", lambda: sub(argv[1:]))
    return run_cli("ret-extract", lambda: _extract(argv))


if __name__ == "__main__":
    sys.exit(main())
