"""Steering toward RET macrostates, evaluated with the power to see a share gain of 0.05.

``bench_steering.py`` chose α on 12 held-out prompts and read the gain on the other 12:
too few to see a gain of 0.05 (power 0.11–0.39, ``benchmarks/steering_power.py``).
Here the two roles get their own prompts:

  - **tuning** (α per group): the demo store's held-out sequences (``--tune-prompts``,
    never seen by the encoder), the whole α grid, the highest target share whose
    perplexity is within ``--max-ppl-ratio`` x α = 0's (``SweepResult.best``);
  - **evaluation**: ``--eval-prompts`` fresh prompts from ``builtin:reasoning_heldout``
    (same templates as the demo's prompts, none of their texts; spread evenly over the
    set, so over its categories), rendered with the chat template as the demo's were.
    Their default, 200, covers the largest number the power calculation asks for
    (181 prompts for the group with the widest spread, ``steering_power.json``).

Everything else is ``bench_steering.py``'s: the demo's RET encoder and centroids, one
vector per group (built from the store without the tuning prompts' sequences), the same
group rule, greedy continuations re-read by the unsteered model. On the evaluation
prompts, in the same run: α = 0 (generated once, shared by every group), each group's
chosen α, and a random vector of the same norm at that α (control). Per group: the
pooled share gain with a paired bootstrap CI over prompts (95 %, and Bonferroni over
the groups), vector − control, perplexity ratio, distinct-2, the specificity row, and
the power the evaluation had for a gain of 0.05 given the per-prompt spread it measured.
A group "rises" when its 95 % CI excludes 0.

    .venv/bin/python benchmarks/bench_steering_powered.py [--demo demo_out] [--eval-prompts 200]

Ends with ``steering_powered_median_gain: <value>`` (median over groups of the evaluation
gain) and writes benchmarks/results/bench_steering_powered.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402
from bench_steering import add_sweep_args, heldout_prompt_ids, prepare  # noqa: E402
from steering_power import share_differences  # noqa: E402

from activation_cache import read_prompts  # noqa: E402
from ret_toolkit.info import paired_power  # noqa: E402
from ret_toolkit.steering import SweepResult, group_vector, render_prompts, sweep  # noqa: E402
from ret_toolkit.steering.evaluate import generate_continuations, reread  # noqa: E402
from ret_toolkit.steering.sweep_result import score_point  # noqa: E402

DELTA = 0.05  # the share gain the evaluation is sized to detect


def evaluation_prompts(n: int):
    """``n`` prompts spread evenly over ``builtin:reasoning_heldout`` (so over its categories)."""
    prompts = read_prompts("builtin:reasoning_heldout")
    if n > len(prompts):
        sys.exit(f"--eval-prompts {n}: builtin:reasoning_heldout holds {len(prompts)}")
    return [prompts[i] for i in np.linspace(0, len(prompts) - 1, n).astype(int)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo_out", help="ret-demo output directory")
    ap.add_argument("--tune-prompts", type=int, default=24, help="held-out store prompts that choose α")
    ap.add_argument("--eval-prompts", type=int, default=200, help="fresh prompts that read the gain")
    add_sweep_args(ap)
    args = ap.parse_args()
    t0 = time.perf_counter()
    outputs, loaded, reader, _, (groups, rule, left_out) = prepare(args)
    tok = loaded.tokenizer
    gen = dict(positions=args.positions, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(f"RET: {outputs.checkpoint} (layers {reader.layers}, window {reader.window}, k {reader.k}); "
          f"groups ({rule}): {groups}", flush=True)

    tune_ids, tune_names, tune_seqs = heldout_prompt_ids(outputs, tok, args.tune_prompts)
    evaluation = evaluation_prompts(args.eval_prompts)
    eval_ids = render_prompts(tok, evaluation, chat=True)
    print(f"tuning: {len(tune_ids)} held-out store prompts x {len(args.alphas.split(','))} α; "
          f"evaluation: {len(eval_ids)} fresh prompts (builtin:reasoning_heldout)", flush=True)

    alphas = [float(a) for a in args.alphas.split(",")]
    vectors, chosen = {}, {}
    for g in groups:
        vectors[g] = group_vector(outputs, g, model=loaded, exclude=tune_seqs)
        tuned = sweep(loaded, tok, reader, vectors[g], g, alphas, tune_ids, **gen)
        chosen[g] = tuned.best(args.max_ppl_ratio).alpha
        print(f"  group {g}: α {chosen[g]:g} (tuning share {tuned.baseline.share:.3f} → "
              f"{tuned.point(chosen[g]).share:.3f}) {time.perf_counter() - t0:.0f} s", flush=True)

    def evaluate(vector, alpha):
        ids = generate_continuations(loaded, tok, eval_ids, vector, alpha, **gen)
        scored = reread(loaded, reader, eval_ids, ids, batch_size=args.batch_size)
        return scored, ids, tok.decode(ids[0]) if ids else ""

    base_scored, base_ids, base_example = evaluate(None, 0.0)
    level = 1 - 0.05 / max(len(groups), 1)
    records, gains = [], []
    print(f"\nevaluation ({len(eval_ids)} fresh prompts x {args.max_new_tokens} new tokens, greedy; "
          f"CI over prompts, 95 % and Bonferroni {level:.4f}; power for a gain of {DELTA} at the measured spread)")
    print(f"{'group':<7}{'α':>6}{'gain':>9}{'95 % CI':>20}{'Bonferroni CI':>20}{'ppl ratio':>11}"
          f"{'vector − control':>28}{'power':>7}{'rises':>7}")
    for g in groups:
        base = score_point(0.0, g, base_scored, reader.k, base_example, base_ids)
        if chosen[g] == 0.0:
            point, control_point = base, base
        else:
            scored, ids, example = evaluate(vectors[g], chosen[g])
            point = score_point(chosen[g], g, scored, reader.k, example, ids)
            c_scored, c_ids, _ = evaluate(vectors[g].random_like(seed=g), chosen[g])
            control_point = score_point(chosen[g], g, c_scored, reader.k, "", c_ids)
        r = SweepResult(g, [base, point] if point is not base else [base], {"n_prompts": len(eval_ids)},
                        args.max_ppl_ratio)
        control = SweepResult(g, [base, control_point] if control_point is not base else [base], {})
        lo, hi = r.paired_ci(point, base)
        blo, bhi = r.paired_ci(point, base, level=level)
        diffs = share_differences(point.prompt_counts, base.prompt_counts)
        sd = float(diffs.std(ddof=1)) if len(diffs) > 1 else float("nan")
        power = paired_power(sd, DELTA, len(diffs)) if sd > 0 else float("nan")
        against = r.against(control, chosen[g]) if point is not base else None
        gain = point.share - base.share
        gains.append(gain)
        rec = {"target_group": g, "alpha": chosen[g], "share_alpha0": base.share, "share": point.share,
               "gain": gain, "ci_low": lo, "ci_high": hi, "bonferroni_ci": [blo, bhi],
               "ppl_ratio": point.perplexity / base.perplexity, "distinct2": [base.distinct2, point.distinct2],
               "control": against, "specificity": r.specificity(chosen[g]) if point is not base else None,
               "per_prompt": {"n": int(len(diffs)), "mean": float(diffs.mean()) if len(diffs) else float("nan"),
                              "sd": sd}, "power_for_delta": power, "rises": bool(lo > 0),
               "rises_bonferroni": bool(blo > 0), "example": point.example}
        records.append(rec)
        ctrl = "n/a (α = 0)" if against is None else \
            f"{against['diff']:+.3f} [{against['ci_low']:+.3f}, {against['ci_high']:+.3f}]"
        print(f"{g:<7}{chosen[g]:>6g}{gain:>+9.3f}{f'[{lo:+.3f}, {hi:+.3f}]':>20}{f'[{blo:+.3f}, {bhi:+.3f}]':>20}"
              f"{rec['ppl_ratio']:>11.2f}{ctrl:>28}{power:>7.2f}{'yes' if rec['rises'] else 'no':>7}", flush=True)
    n_rise = sum(r["rises"] for r in records)
    print(f"groups whose evaluation CI excludes 0: {n_rise} of {len(records)} "
          f"({sum(r['rises_bonferroni'] for r in records)} after Bonferroni); {time.perf_counter() - t0:.0f} s")
    report("bench_steering_powered", "steering_powered_median_gain",
           float(statistics.median(gains)) if gains else float("nan"), {
               "args": vars(args), "groups": groups, "left_out": left_out, "group_rule": rule, "delta": DELTA,
               "tune_prompts": tune_names, "eval_prompts": [p.prompt_id for p in evaluation],
               "results": records, "n_groups_rising": n_rise, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
