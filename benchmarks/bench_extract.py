"""Extraction throughput versus the floor: a bare transformers forward.

Same model (embedded SmolLM2-135M), same prompts, same batches, in one run:
  A. bare `model(ids, output_hidden_states=True)` (nothing stored)
  B. the full `extract()` path: nnsight trace of all 30 layers, unpadding,
     float16 conversion and the HDF5 write of every layer.
Each is run `--repeats` times interleaved; the best time of each is compared.
Then peak RSS of `ret-extract` subprocesses for 50 vs 400 prompts (streaming:
it must not grow with the number of prompts).

    .venv/bin/python benchmarks/bench_extract.py
Last line: `extract_vs_bare_forward: <tokens/s ratio B/A>` (target >= 0.85).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from activation_cache.extract import ExtractConfig, extract, pad_rows, prepare  # noqa: E402
from activation_cache.models import load_model  # noqa: E402
from activation_cache.prompts import read_prompts  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


def write_prompts(path: Path, n: int) -> None:
    """n prompts: the built-in reasoning set, cycled with fresh ids."""
    base = read_prompts("reasoning")
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i:05d}", "text": base[i % len(base)].text}) + "\n")


def bare_forward(loaded, batches) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for ids, mask in batches:
            out = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            assert len(out.hidden_states) == loaded.arch.n_layers + 1
            n += int(mask.sum())
    return time.perf_counter() - t0, n


def peak_rss_mib(prompts: Path, out: Path, batch: int) -> float:
    cmd = [sys.executable, "-c",
           "import resource,sys;from activation_cache.cli import main;rc=main(sys.argv[1:]);"
           "print('RSS',resource.getrusage(resource.RUSAGE_SELF).ru_maxrss);sys.exit(rc)",
           "--prompts", str(prompts), "--out", str(out), "--batch-size", str(batch), "--quiet", "--overwrite"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rss_kib = int([ln for ln in r.stdout.splitlines() if ln.startswith("RSS")][0].split()[1])
    return rss_kib / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-rss", action="store_true")
    a = ap.parse_args()

    loaded = load_model(None)
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    pfile = tmp / "prompts.jsonl"
    write_prompts(pfile, a.prompts)
    cfg = ExtractConfig(prompts=str(pfile), out=str(tmp / "x.h5"), batch_size=a.batch_size, overwrite=True)
    prep = prepare(cfg, loaded)
    batches = [pad_rows(prep.ids[i:i + a.batch_size], loaded.tokenizer.pad_token_id, left=False)
               for i in range(0, len(prep.ids), a.batch_size)]
    bare_forward(loaded, batches[:1])  # warm-up (allocator, first nnsight trace below)
    extract(ExtractConfig(prompts=str(pfile), out=str(tmp / "warm.h5"), batch_size=a.batch_size, overwrite=True),
            loaded=loaded, progress=False)

    bare_t, ext_t = [], []
    n_tok = 0
    for r in range(a.repeats):
        t, n_tok = bare_forward(loaded, batches)
        bare_t.append(t)
        res = extract(cfg, loaded=loaded, progress=False)
        assert res.n_tokens == n_tok, (res.n_tokens, n_tok)
        ext_t.append(res.seconds)
        print(f"repeat {r}: bare {n_tok / t:.0f} tok/s, extract {n_tok / res.seconds:.0f} tok/s")
    bare_tps, ext_tps = n_tok / min(bare_t), n_tok / min(ext_t)
    size = (tmp / "x.h5").stat().st_size
    print(f"tokens: {n_tok}, store: {size / 2**20:.1f} MiB ({size / n_tok:.0f} B/token)")
    print(f"bare forward: {bare_tps:.0f} tok/s; extract incl. HDF5: {ext_tps:.0f} tok/s")

    rss = {}
    if not a.skip_rss:
        for n in (50, 400):
            pf = tmp / f"p{n}.jsonl"
            write_prompts(pf, n)
            rss[n] = peak_rss_mib(pf, tmp / f"rss{n}.h5", a.batch_size)
            print(f"peak RSS, {n} prompts: {rss[n]:.0f} MiB")
        print(f"peak RSS ratio 400/50 prompts: {rss[400] / rss[50]:.3f}")
    ratio = ext_tps / bare_tps
    report("bench_extract", "extract_vs_bare_forward", ratio, {
        "prompts": a.prompts, "batch_size": a.batch_size, "tokens": n_tok, "repeats": a.repeats,
        "bare_tokens_per_s": bare_tps, "extract_tokens_per_s": ext_tps, "bare_seconds": bare_t,
        "extract_seconds": ext_t, "store_bytes": size, "peak_rss_mib": rss,
    })


if __name__ == "__main__":
    main()
