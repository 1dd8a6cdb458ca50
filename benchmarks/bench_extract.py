"""Extraction throughput against the floor, a bare transformers forward, in the same run.

Same model (embedded SmolLM2-135M), same prompts, same batches:
  A. bare ``model(ids, output_hidden_states=True)`` (nothing stored);
  B. the full ``extract()`` path: nnsight trace of all 30 layers, device→host
     copy, float16 cast and the HDF5 write of every layer on the writer thread.
A and B alternate ``--repeats`` times (A B A B ...); each pair gives one
tokens/s ratio B/A, and the median ratio is reported with its range.

Then, on prompts of mixed length (10-200 tokens): ``extract(batch_tokens=N)``
against the bare forward on the same prompts batched naively (``--batch-size``
in prompt order), tokens/s ratio and padding share of both; and peak RSS of
``ret-extract`` subprocesses for 50, 400 and 800 prompts (streaming: memory
must not grow with the number of prompts).

    .venv/bin/python benchmarks/bench_extract.py            # ~20 min on 2 cores
    .venv/bin/python benchmarks/bench_extract.py --quick    # ~3 min, smaller
Last line: ``extract_vs_bare_forward: <median ratio>`` (target >= 0.95).
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from activation_cache import (  # noqa: E402
    ExtractConfig,
    extract,
    load_model,
    pad_rows,
    padding_share,
    prepare,
    read_prompts,
)

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402


def words_prompts(n: int, words: int | list[int], prefix: str = "p") -> list[dict]:
    """n prompts of ``words`` words each (or ``words[i]``): built-in reasoning prompts, joined until long enough."""
    base = [p.text for p in read_prompts("reasoning")]
    out, k = [], 0
    for i in range(n):
        want = words[i] if isinstance(words, list) else words
        text: list[str] = []
        while len(text) < want:
            text += base[k % len(base)].split()
            k += 1
        out.append({"id": f"{prefix}{i:05d}", "text": " ".join(text[:want])})
    return out


def mixed_prompts(n: int, seed: int = 0) -> list[dict]:
    """n prompts of about 10-200 tokens (8-150 words, uniform at random)."""
    g = torch.Generator().manual_seed(seed)
    return words_prompts(n, torch.randint(8, 150, (n,), generator=g).tolist(), prefix="m")


def bare_forward(loaded, batches) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for ids, mask in batches:
            out = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            assert len(out.hidden_states) == loaded.arch.n_layers + 1
            n += int(mask.sum())
    return time.perf_counter() - t0, n


def fixed_batches(prep, batch_size: int, pad_id: int):
    return [pad_rows(prep.ids[i:i + batch_size], pad_id, left=False) for i in range(0, len(prep.ids), batch_size)]


def interleaved(loaded, bare_batches, cfg, repeats: int) -> dict:
    """Alternate bare forward and extract; per-pair tokens/s ratios."""
    ratios, bare_tps, ext_tps = [], [], []
    for r in range(repeats):
        t, n_tok = bare_forward(loaded, bare_batches)
        res = extract(cfg, loaded=loaded, progress=False)
        assert res.n_tokens == n_tok, (res.n_tokens, n_tok)
        bare_tps.append(n_tok / t)
        ext_tps.append(n_tok / res.seconds)
        ratios.append(ext_tps[-1] / bare_tps[-1])
        print(f"  repeat {r}: bare {bare_tps[-1]:.0f} tok/s, extract {ext_tps[-1]:.0f} tok/s, ratio {ratios[-1]:.3f}",
              flush=True)
    return {"median_ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratios": ratios, "bare_tokens_per_s": bare_tps, "extract_tokens_per_s": ext_tps, "tokens": n_tok}


def peak_rss_mib(prompts: Path, out: Path, batch: int) -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of this
    # (large) process would report at least the parent's size.
    cmd = [sys.executable, "-c",
           "import sys;from ret_toolkit.cli.extract import main;rc=main(sys.argv[1:]);"
           "print([ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].strip());sys.exit(rc)",
           "--prompts", str(prompts), "--out", str(out), "--batch-size", str(batch), "--quiet", "--overwrite"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rss_kib = int([ln for ln in r.stdout.splitlines() if ln.startswith("VmHWM")][0].split()[1])
    out.unlink()
    return rss_kib / 1024


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200, help="~40-word prompts of the throughput pairs")
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--mixed-prompts", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rss-prompts", default="50,400,800")
    ap.add_argument("--quick", action="store_true", help="40 prompts, 3 repeats, RSS at 20/40/80 prompts")
    a = ap.parse_args()
    if a.quick:
        a.prompts, a.mixed_prompts, a.repeats, a.rss_prompts = 40, 24, 3, "20,40,80"

    loaded = load_model(None)
    pad_id = loaded.tokenizer.pad_token_id
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))

    print(f"A/B: {a.prompts} prompts of {a.words} words, all layers, batch {a.batch_size}, {a.repeats} pairs", flush=True)
    cfg = ExtractConfig(prompts=words_prompts(a.prompts, a.words), out=str(tmp / "x.h5"), batch_size=a.batch_size,
                        overwrite=True)
    prep = prepare(cfg, loaded)
    batches = fixed_batches(prep, a.batch_size, pad_id)
    bare_forward(loaded, batches[:2])  # warm-up: allocator, first nnsight trace
    extract(ExtractConfig(**{**cfg.__dict__, "limit": 2 * a.batch_size, "out": str(tmp / "warm.h5")}),
            loaded=loaded, progress=False)
    same = interleaved(loaded, batches, cfg, a.repeats)
    size = (tmp / "x.h5").stat().st_size
    (tmp / "x.h5").unlink()

    print("background writer thread on vs off (CPU default: off), same batches", flush=True)
    on_off = []
    for r in range(a.repeats):
        on = extract(ExtractConfig(**{**cfg.__dict__, "pipeline": True}), loaded=loaded, progress=False)
        off = extract(ExtractConfig(**{**cfg.__dict__, "pipeline": False}), loaded=loaded, progress=False)
        on_off.append(off.seconds / on.seconds)
        print(f"  repeat {r}: thread {on.tokens_per_s:.0f} tok/s, inline {off.tokens_per_s:.0f} tok/s, "
              f"ratio {on_off[-1]:.3f}", flush=True)
    pipelined = {"median_ratio_thread_vs_inline": statistics.median(on_off), "ratio_min": min(on_off),
                 "ratio_max": max(on_off), "ratios": on_off}

    print(f"mixed lengths: {a.mixed_prompts} prompts of 10-200 tokens, --batch-tokens {a.batch_tokens} vs "
          f"bare forward in batches of {a.batch_size}", flush=True)
    mcfg = ExtractConfig(prompts=mixed_prompts(a.mixed_prompts), out=str(tmp / "m.h5"), batch_tokens=a.batch_tokens,
                         overwrite=True)
    mprep = prepare(mcfg, loaded)
    lengths = [len(r) for r in mprep.ids]
    naive = [tuple(range(i, min(i + a.batch_size, len(lengths)))) for i in range(0, len(lengths), a.batch_size)]
    grouped = [b for w in mprep.windows() for b in w.batches]
    mixed = interleaved(loaded, fixed_batches(mprep, a.batch_size, pad_id), mcfg, max(3, a.repeats // 2))
    mixed.update(padding_naive=padding_share(naive, lengths), padding_grouped=padding_share(grouped, lengths),
                 batch_tokens=a.batch_tokens, token_lengths=[min(lengths), max(lengths)])
    print(f"  padding share: naive batches {mixed['padding_naive']:.3f}, --batch-tokens {mixed['padding_grouped']:.3f}")

    rss = {}
    for n in (int(x) for x in a.rss_prompts.split(",")):
        rss[n] = peak_rss_mib(write_jsonl(tmp / f"p{n}.jsonl", words_prompts(n, a.words)), tmp / f"rss{n}.h5",
                              a.batch_size)
        print(f"peak RSS, {n} prompts: {rss[n]:.0f} MiB", flush=True)
    ns = sorted(rss)
    rss_ratios = {f"{hi}/{lo}": rss[hi] / rss[lo] for lo, hi in zip(ns, ns[1:])}
    print("peak RSS ratios: " + ", ".join(f"{k} prompts {v:.3f}" for k, v in rss_ratios.items()))

    print(f"same batches: extract/bare median {same['median_ratio']:.3f} "
          f"[{same['ratio_min']:.3f}, {same['ratio_max']:.3f}] over {a.repeats} pairs")
    print(f"writer thread / inline tokens/s median {pipelined['median_ratio_thread_vs_inline']:.3f} "
          f"[{pipelined['ratio_min']:.3f}, {pipelined['ratio_max']:.3f}]")
    print(f"mixed lengths: extract --batch-tokens / bare naive median {mixed['median_ratio']:.3f} "
          f"[{mixed['ratio_min']:.3f}, {mixed['ratio_max']:.3f}]")
    report("bench_extract", "extract_vs_bare_forward", same["median_ratio"], {
        "prompts": a.prompts, "words": a.words, "batch_size": a.batch_size, "repeats": a.repeats,
        "same_batches": same, "store_bytes": size, "writer_thread_vs_inline": pipelined, "mixed_lengths": mixed, "peak_rss_mib": rss,
        "peak_rss_ratios": rss_ratios, "torch_threads": torch.get_num_threads(), "quick": a.quick,
    })


if __name__ == "__main__":
    main()
