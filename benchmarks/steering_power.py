"""How many evaluation prompts the steering benchmark needs to see a share gain of 0.05 with power 0.8.

Reads ``benchmarks/results/bench_steering.json`` (its per-prompt token counts): for every
steered group, the per-prompt difference in the target group's share of generated tokens
between the held-out α and α = 0 over all of the run's prompts, its standard deviation, the
power the run's evaluation half had for a gain of ``--delta`` (normal approximation of a
paired mean, :func:`ret_toolkit.info.paired_power`), the evaluation prompts needed for
``--power`` (:func:`ret_toolkit.info.paired_sample_size`), and a check of that size by
simulation: evaluations of that many prompts drawn from the observed differences, recentred
on the gain, whose percentile bootstrap CI excludes 0 (:func:`ret_toolkit.info.simulated_power`).

    .venv/bin/python benchmarks/steering_power.py [--delta 0.05] [--power 0.8]

Writes benchmarks/results/steering_power.json; last line
``steering_eval_prompts_needed: <the largest over groups>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from ret_toolkit.info import paired_power, paired_sample_size, simulated_power  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def share_differences(counts_a, counts_b) -> np.ndarray:
    """Per prompt, target-group share under A minus under B, from ``prompt_counts`` ``[[in group, generated], ...]``
    of the same prompts; prompts with no generated token on either side are left out."""
    a, b = np.asarray(counts_a, float), np.asarray(counts_b, float)
    ok = (a[:, 1] > 0) & (b[:, 1] > 0)
    return a[ok, 0] / a[ok, 1] - b[ok, 0] / b[ok, 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delta", type=float, default=0.05, help="share gain to detect")
    ap.add_argument("--power", type=float, default=0.8)
    args = ap.parse_args()
    src = RESULTS / "bench_steering.json"
    if not src.exists():
        sys.exit(f"steering_power: {src} not found; run benchmarks/bench_steering.py first")
    det = json.loads(src.read_text())["details"]
    groups = {}
    for g in det["results"]:
        points = {p["alpha"]: p for p in g["points"]}
        diff = share_differences(points[g["held_out"]["alpha"]]["prompt_counts"], points[0.0]["prompt_counts"])
        sd = float(diff.std(ddof=1))
        need = paired_sample_size(sd, args.delta, args.power)
        groups[str(g["target_group"])] = {
            "alpha": g["held_out"]["alpha"], "n_prompts": int(diff.size), "mean_difference": float(diff.mean()),
            "sd": sd, "n_eval_in_run": g["held_out"]["n_eval"],
            "power_in_run": paired_power(sd, args.delta, g["held_out"]["n_eval"]),
            "n_eval_needed": need, "simulated_power_at_needed": simulated_power(diff, args.delta, need)}
        r = groups[str(g["target_group"])]
        print(f"group {g['target_group']}: sd of per-prompt share differences {sd:.3f} over {diff.size} prompts; power "
              f"for +{args.delta} with {r['n_eval_in_run']} evaluation prompts {r['power_in_run']:.2f}; needs "
              f"{need} (simulated power there {r['simulated_power_at_needed']:.2f})", flush=True)
    needed = max(r["n_eval_needed"] for r in groups.values())
    report("steering_power", "steering_eval_prompts_needed", needed,
           {"delta": args.delta, "power": args.power, "alpha": 0.05, "groups": groups,
            "source": "benchmarks/results/bench_steering.json"})


if __name__ == "__main__":
    main()
