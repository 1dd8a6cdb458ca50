"""Cost of steering hooks: generated tokens/s with a zero steering vector attached vs no hook at all.

Embedded SmolLM2-135M-Instruct, the same chat prompts and the same number of
new tokens in every condition (``min_new_tokens = max_new_tokens``, greedy), in
one process. The conditions are interleaved in every repetition (order rotated)
and each repetition gives a *paired* ratio (baseline time / steered time), so
load drift on a shared machine hits both sides; the reported ratio is the
median over repetitions. Conditions:

- ``none``: plain ``model.generate``, no hook (the baseline);
- ``hooks``: the same inside ``steer(model, zero_vector, positions=...)`` (forward hooks);
- ``nnsight``: ``nnsight_generate`` with the zero vector (nnsight interventions).

A zero vector leaves the tokens unchanged (checked), so the work is identical
and the difference is the hooks' cost. Ends with
``steering_hook_overhead_ratio: <value>`` (hooks vs none, tokens/s; 1 = free).

    .venv/bin/python benchmarks/bench_steering_overhead.py [--reps 7] [--batch-size 1] [--layers 15]
Writes benchmarks/results/bench_steering_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_threads_arg, report  # noqa: E402

from activation_cache import (
    left_pad,  # noqa: E402
    load_model,  # noqa: E402
    read_prompts,  # noqa: E402
)
from ret_toolkit.steering import (  # noqa: E402
    SteeringVector,
    language_model,
    nnsight_generate,
    render_prompts,  # noqa: E402
    steer,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per repetition (built-in reasoning set)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--layers", default="15", help="blocks that get the (zero) vector, comma-separated")
    ap.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    ap.add_argument("--no-nnsight", action="store_true")
    add_threads_arg(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    loaded = load_model(None)
    model, tok = loaded.model, loaded.tokenizer
    layers = [int(x) for x in args.layers.split(",")]
    zero = SteeringVector({x: torch.zeros(loaded.arch.d_model) for x in layers}, model=loaded.name)
    prompts = read_prompts("reasoning")
    prompts = [prompts[int(i * len(prompts) / args.prompts)] for i in range(args.prompts)]  # spread over categories
    ids = render_prompts(tok, prompts, chat=True)
    batches = [left_pad(ids[lo : lo + args.batch_size], tok.pad_token_id) for lo in range(0, len(ids), args.batch_size)]
    gen_kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
    lm = None if args.no_nnsight else language_model(loaded)

    def run(cond: str) -> list[torch.Tensor]:
        outs = []
        with torch.inference_mode():
            for b in batches:
                if cond == "none":
                    outs.append(model.generate(**b, **gen_kw))
                elif cond == "hooks":
                    with steer(loaded, zero, alpha=1.0, positions=args.positions):
                        outs.append(model.generate(**b, **gen_kw))
                else:
                    outs.append(nnsight_generate(lm, b, zero, alpha=1.0, positions=args.positions, model_name=loaded.name,
                                                 **gen_kw))
        return outs

    conds = ["none", "hooks"] + ([] if args.no_nnsight else ["nnsight"])
    reference = run("none")  # warm-up (also the tokens every condition must reproduce)
    for cond in conds[1:]:
        got = run(cond)
        same = all(torch.equal(a, b.to(a.device)) for a, b in zip(reference, got))
        print(f"{cond}: same tokens as no hook: {same}", flush=True)
        if not same:
            raise SystemExit(f"{cond}: a zero vector changed the generated tokens; the comparison would be unfair")
    n_tokens = sum(b["input_ids"].shape[0] for b in batches) * args.new_tokens
    times: dict[str, list[float]] = {c: [] for c in conds}
    for rep in range(args.reps):
        order = conds[rep % len(conds):] + conds[: rep % len(conds)]  # rotate who goes first
        for cond in order:
            t0 = time.perf_counter()
            run(cond)
            times[cond].append(time.perf_counter() - t0)
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{c} {n_tokens / times[c][-1]:.1f} tok/s" for c in conds),
              flush=True)

    paired = {c: [b / t for b, t in zip(times["none"], times[c])] for c in conds[1:]}
    ratio = {c: statistics.median(v) for c, v in paired.items()}
    tps = {c: n_tokens / statistics.median(times[c]) for c in conds}
    print(f"\n{n_tokens} generated tokens per repetition ({len(ids)} prompts, batch {args.batch_size}, "
          f"{args.new_tokens} new tokens each), zero vector at block(s) {layers}, positions={args.positions}, "
          f"{args.reps} interleaved repetitions, torch threads {torch.get_num_threads()}")
    print(f"{'condition':<10}{'median tok/s':>14}{'ratio vs none':>15}{'paired ratios (min..max)':>28}")
    for c in conds:
        r = ratio.get(c, 1.0)
        spread = f"{min(paired[c]):.3f}..{max(paired[c]):.3f}" if c in paired else "—"
        print(f"{c:<10}{tps[c]:>14.1f}{r:>15.3f}{spread:>28}")
    report("bench_steering_overhead", "steering_hook_overhead_ratio", ratio["hooks"], {
        "args": vars(args), "n_tokens_per_rep": n_tokens, "seconds": times, "tokens_per_s_median": tps,
        "paired_ratios": paired, "ratio_median": ratio, "target": 0.95,
    })


if __name__ == "__main__":
    main()
