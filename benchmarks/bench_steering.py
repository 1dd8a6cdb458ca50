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
ret_toolkit/steering/evaluate.py). Controls, in the same run:
  - α is chosen on a random half of the prompts (highest share with perplexity within
    ``--max-ppl-ratio`` x α = 0's on that half) and its gain is read on the other half,
    with a paired bootstrap CI over those prompts (``SweepResult.held_out``);
  - a random vector of the same norm at the same layer, at that α (``random_like``);
  - the target x measured-group matrix of share changes (specificity);
  - repetition (distinct-2) next to perplexity;
  - the vectors are built from the store without the evaluation prompts' sequences.
A group "rises" only when its held-out CI excludes 0. Ends with
``steering_heldout_share_gain: <value>``: the median over groups of the held-out gain.

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


def swept_groups(shares: np.ndarray, args: argparse.Namespace) -> tuple[list[int], str, list[int]]:
    """(groups to sweep, the rule that picked them, groups left out): ``--groups`` or the module docstring's rule."""
    if args.groups:
        groups, rule = [int(g) for g in args.groups.split(",")], "given by --groups"
    else:
        groups = [int(g) for g in np.argsort(-shares) if shares[g] >= args.min_generated_share][: args.max_groups]
        rule = f"generated share >= {args.min_generated_share}, at most {args.max_groups}"
    return groups, rule, [g for g in range(len(shares)) if g not in groups]


def add_sweep_args(ap: argparse.ArgumentParser) -> None:
    """The options both steering benchmarks share: α grid, generation, :func:`swept_groups`' rule, the
    fluency budget, threads."""
    ap.add_argument("--alphas", default="0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.6")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    ap.add_argument("--min-generated-share", type=float, default=0.05)
    ap.add_argument("--max-groups", type=int, default=6)
    ap.add_argument("--groups", default=None, help="comma-separated group ids instead of the rule above")
    ap.add_argument("--max-ppl-ratio", type=float, default=1.5)
    add_threads_arg(ap)


def prepare(args: argparse.Namespace):
    """Threads and seed set, then ``(demo outputs, loaded model, RET reader, generated shares per group,
    (groups, rule, left out))`` (:func:`swept_groups`)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    outputs = find_outputs(args.demo)
    loaded = load_model(None)
    reader = load_reader(outputs.checkpoint, loaded)
    shares = generated_shares(outputs, reader.k)
    return outputs, loaded, reader, shares, swept_groups(shares, args)


def heldout_prompt_ids(outputs, tokenizer, n: int) -> tuple[list[list[int]], list[str], list[int]]:
    """Prompt token ids (the stored prompt part of each held-out sequence, chat template included),
    their prompt ids and their store sequence indices."""
    with TrajectoryStore(outputs.store) as store:
        _, held = checkpoint_split(outputs.checkpoint, outputs.store, store.n_sequences)
        picks = held[np.linspace(0, len(held) - 1, min(n, len(held))).astype(int)]
        ids, names = [], []
        for s in picks:
            tokens, gen = store.tokens(int(s)), store.generated(int(s))
            ids.append(tokens[~gen].astype(int).tolist())  # generated tokens come after the prompt
            names.append(store.meta(int(s)).get("prompt_id", str(s)))
    return ids, names, [int(s) for s in picks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo_out", help="ret-demo output directory")
    ap.add_argument("--prompts", type=int, default=24, help="held-out prompts per sweep point")
    add_sweep_args(ap)
    args = ap.parse_args()
    t0 = time.perf_counter()
    outputs, loaded, reader, shares, (groups, rule, left_out) = prepare(args)
    print(f"RET: {outputs.checkpoint} (layers {reader.layers}, window {reader.window}, k {reader.k})")
    print("share of the store's generated tokens per group: "
          + ", ".join(f"{g}: {shares[g]:.3f}" for g in range(reader.k)))
    print(f"groups swept ({rule}): {groups}; left out: {left_out}", flush=True)
    prompt_ids, prompt_names, prompt_seqs = heldout_prompt_ids(outputs, loaded.tokenizer, args.prompts)
    alphas = [float(a) for a in args.alphas.split(",")]

    results, controls = [], {}
    for g in groups:
        vec = group_vector(outputs, g, model=loaded, exclude=prompt_seqs)  # never built from evaluation prompts
        print(f"\ngroup {g}: vector at block(s) {vec.layers}, norm {vec[vec.layers[0]].norm():.1f}", flush=True)
        r = sweep(loaded, loaded.tokenizer, reader, vec, g, alphas, prompt_ids, positions=args.positions,
                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                  progress=lambda p: print(f"  alpha {p.alpha:<5g} share {p.share:.3f}  perplexity {p.perplexity:7.2f}"
                                           f"  tokens {p.n_tokens:4d}  {' '.join(p.example.split())[:70]!r}", flush=True))
        r.max_ppl_ratio = args.max_ppl_ratio
        results.append(r)
        h = r.held_out()
        controls[g] = sweep(loaded, loaded.tokenizer, reader, vec.random_like(seed=g), g, [h["alpha"]], prompt_ids,
                            positions=args.positions, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    print(f"\nshare of generated tokens in the target group (perplexity / perplexity at alpha 0); "
          f"{len(prompt_ids)} held-out prompts x {args.max_new_tokens} new tokens, greedy, positions={args.positions}")
    head = "".join(f"{a:>15g}" for a in [0.0] + sorted(alphas))
    print(f"{'group':<7}{head}")
    for r in results:
        cells = "".join(f"{p.share:>7.3f} ({p.perplexity / r.baseline.perplexity:4.2f})" for p in r.points)
        print(f"{r.target_group:<7}{cells}")
    print(f"\nheld-out alpha per group: chosen on half of the prompts (highest share with perplexity <= "
          f"{args.max_ppl_ratio}x alpha 0 there), gain read on the other half with a paired bootstrap CI over them; "
          f"control: a random vector of the same norm at the same layer and alpha")
    print(f"{'group':<7}{'α':>6}{'gain (eval half)':>28}{'ppl ratio':>11}{'distinct-2 (0 → α)':>20}"
          f"{'vector − control':>28}{'rises':>7}")
    gains, records = [], []
    for r in results:
        h = r.held_out()
        chosen, base = r.point(h["alpha"]), r.baseline
        control = r.against(controls[r.target_group], h["alpha"]) if h["alpha"] else None
        record = r.to_json()
        record["control"] = control
        record["specificity"] = r.specificity(h["alpha"])
        record["rises"] = bool(h["ci_low"] > 0)  # only when the held-out CI excludes 0
        records.append(record)
        gains.append(h["gain"])
        ctrl = "n/a (α = 0)" if control is None else \
            f"{control['diff']:+.3f} [{control['ci_low']:+.3f}, {control['ci_high']:+.3f}]"
        print(f"{r.target_group:<7}{h['alpha']:>6g}{h['gain']:>+10.3f} [{h['ci_low']:+.3f}, {h['ci_high']:+.3f}]"
              f"{h['ppl_ratio']:>11.2f}{base.distinct2:>11.3f} → {chosen.distinct2:.3f}{ctrl:>28}"
              f"{'yes' if record['rises'] else 'no':>7}")
    print("\nspecificity: change in each measured group's share at the held-out alpha (rows: target group; "
          "* where the paired CI excludes 0)")
    print(f"{'target':<8}" + "".join(f"{g:>9}" for g in range(reader.k)))
    for rec in records:
        cells = "".join(f"{c['change']:>+8.3f}{'*' if c['ci_low'] > 0 or c['ci_high'] < 0 else ' '}"
                        for c in rec["specificity"])
        print(f"{rec['target_group']:<8}{cells}")
    n_rise = sum(r["rises"] for r in records)
    gain = float(statistics.median(gains)) if gains else float("nan")
    print(f"groups whose held-out gain CI excludes 0: {n_rise} of {len(results)}; {time.perf_counter() - t0:.0f} s")
    write_sweep_html(RESULTS / "steering.html", results, args.max_ppl_ratio)
    report("bench_steering", "steering_heldout_share_gain", gain, {
        "args": vars(args), "groups": groups, "left_out": left_out, "group_rule": rule,
        "generated_share_per_group": shares.tolist(), "prompts": prompt_names, "results": records,
        "prompt_sequences": prompt_seqs, "n_groups_rising": n_rise, "seconds": time.perf_counter() - t0,
    })


if __name__ == "__main__":
    main()
