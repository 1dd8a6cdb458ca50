"""Steering toward RET macrostates on the embedded model: target-group share vs α, at bounded perplexity.

Setup (everything from the demo run, ``make demo`` -> demo_out/):
  - RET encoder + k-means centroids: demo_out/ret_macro.ckpt (loaded with weights_only=True);
  - one steering vector per group: mean hidden state of the group's tokens minus the
    overall mean at the RET layer (block 15 of SmolLM2-135M), scaled to the median
    token norm there (``group_vector``);
  - prompts: the demo store's *held-out* sequences (the RET split's validation
    prompts, never seen by the encoder), chat template as in the demo;
  - groups (rule fixed before looking at any sweep): every group holding at least
    ``--min-generated-share`` of the store's generated tokens, largest first, at most
    ``--max-groups``. Groups that only occur in the chat template / prompt are not
    something generation can be steered into, so they are left out, and said so.

For every group and every α (the baseline α = 0 in the same run), ``sweep`` generates
greedy continuations with ``steer(model, v_g, alpha=α)`` and re-reads them with the
unsteered model: share of generated tokens whose RET group is g, and perplexity of the
generated tokens under the unsteered model (why the unsteered re-read:
ret_toolkit/steering/evaluate.py). The best α of a group is the one with the highest
share among those whose perplexity stays within ``--max-ppl-ratio`` (1.5) x the α = 0
perplexity. Ends with ``steering_target_share_gain: <value>``: the median over groups
of (share at the best α) - (share at α = 0).

    .venv/bin/python benchmarks/bench_steering.py [--demo demo_out] [--prompts 24] [--alphas 0.05,0.1,...]
Writes benchmarks/results/bench_steering.json and benchmarks/results/steering.html.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_threads_arg, report  # noqa: E402

from activation_cache import (
    TrajectoryStore,  # noqa: E402
    load_model,  # noqa: E402
)
from ret_toolkit.macro import (
    checkpoint_split,  # noqa: E402
    open_macro,  # noqa: E402
)
from ret_toolkit.steering import find_outputs, group_vector, load_reader, sweep  # noqa: E402
from ret_toolkit.viz import write_sweep_html  # noqa: E402


def generated_shares(outputs, k: int) -> np.ndarray:
    """Share of the store's generated tokens in each group, (K,)."""
    with open_macro(outputs.macro_file) as f:
        groups = f["group"][:]
    with TrajectoryStore(outputs.store) as store:
        generated = store.h5["generated"][: store.n_tokens].astype(bool)
    counts = np.bincount(groups[generated], minlength=k)
    return counts / max(counts.sum(), 1)


def heldout_prompt_ids(outputs, tokenizer, n: int) -> tuple[list[list[int]], list[str]]:
    """Prompt token ids (the stored prompt part of each held-out sequence, chat template included)."""
    with TrajectoryStore(outputs.store) as store:
        _, held = checkpoint_split(outputs.checkpoint, store.n_sequences)
        picks = held[np.linspace(0, len(held) - 1, min(n, len(held))).astype(int)]
        ids, names = [], []
        for s in picks:
            tokens, gen = store.tokens(int(s)), store.generated(int(s))
            ids.append(tokens[~gen].astype(int).tolist())  # generated tokens come after the prompt
            names.append(store.meta(int(s)).get("prompt_id", str(s)))
    return ids, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo_out", help="ret-demo output directory")
    ap.add_argument("--prompts", type=int, default=24, help="held-out prompts per sweep point")
    ap.add_argument("--alphas", default="0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.6")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    ap.add_argument("--min-generated-share", type=float, default=0.05)
    ap.add_argument("--max-groups", type=int, default=6)
    ap.add_argument("--groups", default=None, help="comma-separated group ids instead of the rule above")
    ap.add_argument("--max-ppl-ratio", type=float, default=1.5)
    add_threads_arg(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()

    outputs = find_outputs(args.demo)
    loaded = load_model(None)
    reader = load_reader(outputs.checkpoint, loaded)
    shares = generated_shares(outputs, reader.k)
    if args.groups:
        groups = [int(g) for g in args.groups.split(",")]
        rule = "given by --groups"
    else:
        order = np.argsort(-shares)
        groups = [int(g) for g in order if shares[g] >= args.min_generated_share][: args.max_groups]
        rule = f"generated share >= {args.min_generated_share}, at most {args.max_groups}"
    left_out = [int(g) for g in range(reader.k) if g not in groups]
    print(f"RET: {outputs.checkpoint} (layers {reader.layers}, window {reader.window}, k {reader.k})")
    print("share of the store's generated tokens per group: "
          + ", ".join(f"{g}: {shares[g]:.3f}" for g in range(reader.k)))
    print(f"groups swept ({rule}): {groups}; left out: {left_out}", flush=True)
    prompt_ids, prompt_names = heldout_prompt_ids(outputs, loaded.tokenizer, args.prompts)
    alphas = [float(a) for a in args.alphas.split(",")]

    results = []
    for g in groups:
        vec = group_vector(outputs, g, model=loaded)
        print(f"\ngroup {g}: vector at block(s) {vec.layers}, norm {vec[vec.layers[0]].norm():.1f}", flush=True)
        r = sweep(loaded, loaded.tokenizer, reader, vec, g, alphas, prompt_ids, positions=args.positions,
                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_ppl_ratio=args.max_ppl_ratio,
                  progress=lambda p: print(f"  alpha {p.alpha:<5g} share {p.share:.3f}  perplexity {p.perplexity:7.2f}"
                                           f"  tokens {p.n_tokens:4d}  {' '.join(p.example.split())[:70]!r}", flush=True))
        results.append(r)

    print(f"\nshare of generated tokens in the target group (perplexity / perplexity at alpha 0); "
          f"{len(prompt_ids)} held-out prompts x {args.max_new_tokens} new tokens, greedy, positions={args.positions}")
    head = "".join(f"{a:>15g}" for a in [0.0] + sorted(alphas))
    print(f"{'group':<7}{head}")
    for r in results:
        cells = "".join(f"{p.share:>7.3f} ({p.perplexity / r.baseline.perplexity:4.2f})" for p in r.points)
        print(f"{r.target_group:<7}{cells}")
    print(f"\nbest alpha per group (highest share with perplexity <= {args.max_ppl_ratio}x alpha 0)")
    print(f"{'group':<7}{'share@0':>9}{'best α':>8}{'share@best':>12}{'ppl ratio':>11}{'gain':>8}"
          f"{'95% CI (prompts)':>19}{'rises':>7}")
    gains, records = [], []
    for r in results:
        base, best = r.baseline, r.best()
        within = [p for p in r.points if p.alpha >= 0 and p.perplexity <= args.max_ppl_ratio * base.perplexity]
        # "rises": share grows from α = 0 up to the best α (Spearman > 0 over the in-budget points up to it)
        upto = [p for p in within if p.alpha <= best.alpha]
        rho = _spearman([p.alpha for p in upto], [p.share for p in upto]) if len(upto) >= 2 else float("nan")
        record = r.to_json()  # share_gain_ci: paired bootstrap over prompts (not over the α choice)
        record["rises"] = bool(r.gain() > 0 and rho > 0)
        records.append(record)
        gains.append(r.gain())
        ci = f"[{record['share_gain_ci'][0]:+.3f}, {record['share_gain_ci'][1]:+.3f}]"
        print(f"{r.target_group:<7}{base.share:>9.3f}{best.alpha:>8g}{best.share:>12.3f}"
              f"{best.perplexity / base.perplexity:>11.2f}{r.gain():>8.3f}{ci:>19}"
              f"{'yes' if record['rises'] else 'no':>7}")
    n_rise = sum(r["rises"] for r in records)
    gain = float(statistics.median(gains)) if gains else float("nan")
    print(f"groups whose share rises with α within the perplexity budget: {n_rise} of {len(results)}; "
          f"{time.perf_counter() - t0:.0f} s")
    write_sweep_html(RESULTS / "steering.html", results, args.max_ppl_ratio)
    report("bench_steering", "steering_target_share_gain", gain, {
        "args": vars(args), "groups": groups, "left_out": left_out, "group_rule": rule,
        "generated_share_per_group": shares.tolist(), "prompts": prompt_names, "results": records,
        "n_groups_rising": n_rise, "seconds": time.perf_counter() - t0,
    })


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    return float(rho) if np.isfinite(rho) else 0.0


if __name__ == "__main__":
    main()
