"""Distributed extraction: 2 ranks x 1 thread under torchrun against 1 rank x 1 thread, same prompts, same run.

Both sides are whole ``ret-extract`` commands (model load included), timed by
wall clock and alternated ``--repeats`` times (1 2 1 2 ...); each pair gives
one speed-up, reported as the median with its range. The merged store of the
two-rank run must equal the one-rank store token for token and value for value.

Each repeat also times both sides on 2 prompts per rank: that is the fixed
cost of a run (Python and ``transformers`` imports, the model load, the
rendezvous and the merge, ~8 s on one rank here), which no number of ranks
divides. The speed-up of what remains (the extraction itself) is reported
next to the whole-command figure.

    .venv/bin/python benchmarks/bench_distributed.py            # ~14 min on 2 cores
Last line: ``distributed_speedup_2_ranks: <median>`` (target >= 1.7).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402
from bench_extract import words_prompts  # noqa: E402

from activation_cache import open_store  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=ENV, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def same_content(a: Path, b: Path) -> bool:
    with open_store(a) as x, open_store(b) as y:
        if x.meta_column("prompt_id") != y.meta_column("prompt_id") or not np.array_equal(x.offsets, y.offsets):
            return False
        if not np.array_equal(x.h5["tokens"][: x.n_tokens], y.h5["tokens"][: y.n_tokens]):
            return False
        return all(np.array_equal(x.hidden_dataset(k)[: x.n_tokens], y.hidden_dataset(k)[: y.n_tokens]) for k in x.layers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in words_prompts(a.prompts, a.words)))
    common = ["--prompts", str(prompts), "--layers", a.layers, "--quiet", "--overwrite"]
    one = [str(BIN / "ret-extract"), "--out", str(tmp / "one.h5"), *common]
    two = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--standalone", str(BIN / "ret-extract"),
           "--out", str(tmp / "two.h5"), *common]
    timed(one[:-1] + ["--limit", "2", "--out", str(tmp / "warm.h5")])  # page cache, dequantised model

    t1, t2, f1, f2, speedups, phase = [], [], [], [], [], []
    for r in range(a.repeats):
        t1.append(timed(one))
        f1.append(timed(one + ["--limit", "2", "--out", str(tmp / "fixed1.h5")]))
        t2.append(timed(two))
        f2.append(timed(two + ["--limit", "4", "--out", str(tmp / "fixed2.h5")]))
        speedups.append(t1[-1] / t2[-1])
        phase.append((t1[-1] - f1[-1]) / (t2[-1] - f2[-1]))
        print(f"repeat {r}: 1 rank {t1[-1]:.1f} s (fixed {f1[-1]:.1f} s), 2 ranks {t2[-1]:.1f} s "
              f"(fixed {f2[-1]:.1f} s), speed-up {speedups[-1]:.2f}, extraction only {phase[-1]:.2f}", flush=True)
    identical = same_content(tmp / "one.h5", tmp / "two.h5")
    with open_store(tmp / "one.h5") as s:
        n_tokens = s.n_tokens
    print(f"{a.prompts} prompts, {n_tokens} tokens, layers {a.layers}; merged 2-rank store identical: {identical}")
    med = statistics.median(speedups)
    print(f"speed-up median {med:.2f} [{min(speedups):.2f}, {max(speedups):.2f}] over {a.repeats} pairs; "
          f"extraction only {statistics.median(phase):.2f} [{min(phase):.2f}, {max(phase):.2f}]")
    report("bench_distributed", "distributed_speedup_2_ranks", med, {
        "prompts": a.prompts, "words": a.words, "layers": a.layers, "tokens": n_tokens, "repeats": a.repeats,
        "one_rank_seconds": t1, "two_rank_seconds": t2, "speedups": speedups, "speedup_min": min(speedups),
        "speedup_max": max(speedups),
        "fixed_one_rank_seconds": f1, "fixed_two_rank_seconds": f2, "extraction_only_speedups": phase,
        "extraction_only_speedup": statistics.median(phase), "merged_identical": identical, "threads_per_rank": 1,
    })
    if not identical:
        sys.exit("the merged 2-rank store differs from the 1-rank store")


if __name__ == "__main__":
    main()
