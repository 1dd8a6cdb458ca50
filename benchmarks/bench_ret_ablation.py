"""RET ablation on a tuning split, with seeds: which settings, and does RET beat its baselines on test sequences?

Protocol (fixed before any run):
  - data: the demo store (``make demo`` -> demo_out/trajectories.h5), split once by
    sequence (seed 0) into 60 % train, 20 % tune, 20 % test. RET trains on train; the
    Lightning validation loss is logged on tune + test but selects nothing (the last
    checkpoint is used, as in the demo).
  - RET variants (the ablation): the default (predictor told k, window w = 8, d = 16,
    K = 8, no VICReg), the horizon-blind predictor, VICReg terms (var 1, cov 0.04),
    w = 4, w = 16, d = 8, K = 4; each with seeds 0, 1, 2 and the same epochs. The layer
    is the demo's (the store holds one layer, so layers are not ablated here).
  - baselines get the same budget of 7 settings: the window mean's w and the EMA
    control's half-life in {2, 4, 6, 8, 12, 16, 24} tokens (k-means on raw h and on
    PCA_d(h) have no setting; their d is RET's).
  - criterion, read on tune only: P(same next) on generated tokens (for RET the mean over
    its seeds), among settings whose largest group holds at most 50 % of the generated
    tokens on average (one group is trivially "consistent"); if no RET variant is
    eligible, the default stays.
  - test, read once at the end: per variant the mean [min, max] over seeds of P(same next)
    (all tokens and generated), token MI, max occupancy and closure gaps (against the
    token now and against the whole window at 1, 4, 8 tokens); the chosen RET minus each
    chosen baseline in P(same next) with a paired bootstrap CI over test sequences
    (seeds averaged inside every resample; baseline k-means seeded like the RET run).

    .venv/bin/python benchmarks/bench_ret_ablation.py [--store demo_out/trajectories.h5] [--epochs 8]

Finished runs are kept under --work and reused when the script is run again.
Writes benchmarks/results/bench_ret_ablation.json; its last line is
``ret_minus_window_p_same_next_generated: <value>`` (chosen RET minus the chosen
window-mean baseline, generated tokens, test split).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from activation_cache import TrajectoryStore  # noqa: E402
from ret_toolkit.macro import (  # noqa: E402
    EvaluationSettings, checkpoint_split, consistency_difference, evaluate_sequences, load_ret, train,
)

VARIANTS = {
    "default": {},
    "horizon_blind": {"model": {"predictor_horizon": False}},
    "vicreg": {"model": {"var_weight": 1.0, "cov_weight": 0.04}},
    "window4": {"data": {"window": 4}},
    "window16": {"data": {"window": 16}},
    "d8": {"model": {"z_dim": 8}},
    "K4": {"data": {"max_horizon": 4}},
}
SEEDS = (0, 1, 2)
BASELINE_GRID = (2, 4, 6, 8, 12, 16, 24)
MAX_OCCUPANCY = 0.5


def split(store_path: str, ckpt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, tune, test) sequence indices: the checkpoint's validation sequences halved by a seeded permutation."""
    with TrajectoryStore(store_path) as store:
        tr, held = checkpoint_split(ckpt, store_path, store.n_sequences)
    perm = np.random.default_rng(0).permutation(held)
    half = len(perm) // 2
    return tr, np.sort(perm[:half]), np.sort(perm[half:])


def tune_score(metrics_by_seed: list[dict], name: str) -> float:
    """Mean over seeds of P(same next) on generated tokens; -inf when on average one group holds over
    MAX_OCCUPANCY of them (a single group is trivially consistent)."""
    gens = [m["generated"] for m in metrics_by_seed]
    if np.mean([g["group_occupancy_max"][name] for g in gens]) > MAX_OCCUPANCY:
        return float("-inf")
    return float(np.mean([g["temporal_consistency"][name]["p_same_next"] for g in gens]))


def summary(metrics: dict, name: str) -> dict:
    """The test-table entries of one method in one run (plain floats; None where not defined)."""
    gen = metrics["generated"]
    out = {"p_same_next": metrics["temporal_consistency"][name]["p_same_next"],
           "p_same_next_generated": gen["temporal_consistency"][name]["p_same_next"],
           "token_mi_bits": metrics["token_mi_bits"][name], "max_occupancy": metrics["group_occupancy_max"][name],
           "max_occupancy_generated": gen["group_occupancy_max"][name],
           "closure_gap": metrics.get("closure_gap", {}).get(name)}
    for tau, by_name in metrics.get("closure_window", {}).items():
        out[f"closure_window_{tau}"] = by_name.get(name, {}).get("gap")
    return out


def run_variant(name: str, seed: int, args, work: Path) -> dict:
    """Train one RET variant with one seed (or reuse the finished run) and score it on tune and test."""
    cache = work / f"{name}_seed{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    spec = VARIANTS[name]
    t0 = time.perf_counter()
    data = {"val_fraction": 0.4, "split_seed": 0, **spec.get("data", {})}
    res = train([args.store], layers=args.layers, data=data, model=spec.get("model"), max_epochs=args.epochs,
                root_dir=work / "runs" / f"{name}_seed{seed}", seed=seed, progress=False)
    train_s = time.perf_counter() - t0
    module = load_ret(res.checkpoint)
    tr, tune, test = split(args.store, res.checkpoint)
    with TrajectoryStore(args.store) as store:
        ev_tune = evaluate_sequences(module, store, tr, tune, EvaluationSettings(args.k, seed, closure=False))
        ev_test = evaluate_sequences(module, store, tr, test, EvaluationSettings(args.k, seed))
    out = {"variant": name, "seed": seed, "train_seconds": train_s, "checkpoint": str(res.checkpoint),
           "tune": ev_tune.metrics, "test": ev_test.metrics, "test_groups": [g.tolist() for g in ev_test.groups["ret"]],
           "test_generated": [g.tolist() for g in ev_test.generated]}
    cache.write_text(json.dumps(out))
    return out


def generated_runs(groups: list[list], generated: list[list]) -> list[np.ndarray]:
    """Per test sequence, the groups of its generated tokens (a contiguous answer at the end)."""
    return [np.asarray(g)[np.asarray(m, bool)] for g, m in zip(groups, generated)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="demo_out/trajectories.h5")
    ap.add_argument("--layers", default="middle")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--work", default="benchmarks/results/ret_ablation_runs")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (default: all; a quick check)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0,1,2)")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    seeds = tuple(int(x) for x in args.seeds.split(","))
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "default" not in variants:
        sys.exit(f"bench_ret_ablation: --variants must include default and name only {', '.join(VARIANTS)}")
    if not Path(args.store).exists():
        sys.exit(f"bench_ret_ablation: {args.store} not found; run `make demo` first")
    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    runs = {}
    for name in variants:
        for seed in seeds:
            r = run_variant(name, seed, args, work)
            runs[name, seed] = r
            print(f"{name:<14} seed {seed}: train {r['train_seconds']:.0f} s, tune P(same next) generated "
                  f"{r['tune']['generated']['temporal_consistency']['ret']['p_same_next']:.3f}", flush=True)

    # ---- choices on the tuning split only
    scores = {name: tune_score([runs[name, s]["tune"] for s in seeds], "ret") for name in variants}
    # no eligible variant: the default stays (max keeps the first of equal scores, and default is first)
    chosen = max(scores, key=scores.get)
    ref = runs["default", 0]
    module = load_ret(ref["checkpoint"])
    tr, tune, test = split(args.store, ref["checkpoint"])
    base_tune = {}
    with TrajectoryStore(args.store) as store:
        for w in BASELINE_GRID:
            m = evaluate_sequences(module, store, tr, tune, EvaluationSettings(args.k, 0, window=w, ema_half_life=w,
                                                                               closure=False)).metrics
            base_tune[w] = {"kmeans_window": tune_score([m], "kmeans_window"), "ema": tune_score([m], "ema")}
        best_w = max(BASELINE_GRID, key=lambda w: base_tune[w]["kmeans_window"])
        best_h = max(BASELINE_GRID, key=lambda w: base_tune[w]["ema"])
        print(f"\nchosen on tune: RET {chosen} ({scores[chosen]:.3f}); window mean w={best_w} "
              f"({base_tune[best_w]['kmeans_window']:.3f}); EMA half-life {best_h} ({base_tune[best_h]['ema']:.3f})")

        # ---- test: the chosen baselines, seeded like each RET run of the chosen variant
        base_test, base_groups = {}, {}
        for s in seeds:
            r = runs[chosen, s]
            m = load_ret(r["checkpoint"])
            ev = evaluate_sequences(m, store, tr, test, EvaluationSettings(args.k, s, window=best_w, ema_half_life=best_h))
            base_test[s] = ev.metrics
            base_groups[s] = ev.groups
        generated = runs[chosen, 0]["test_generated"]

    # ---- test tables
    table = {}
    for name in variants:
        cells = [summary(runs[name, s]["test"], "ret") for s in seeds]
        table[name] = {key: {"mean": float(np.mean([c[key] for c in cells])), "min": float(min(c[key] for c in cells)),
                             "max": float(max(c[key] for c in cells))}
                       for key in cells[0] if cells[0][key] is not None}
    for name in ("kmeans_raw", "kmeans_pca", "kmeans_window", "ema"):
        cells = [summary(base_test[s], name) for s in seeds]
        table[name] = {key: {"mean": float(np.mean([c[key] for c in cells])), "min": float(min(c[key] for c in cells)),
                             "max": float(max(c[key] for c in cells))}
                       for key in cells[0] if cells[0][key] is not None}
    cols = ["p_same_next", "p_same_next_generated", "token_mi_bits", "max_occupancy_generated", "closure_gap",
            "closure_window_1", "closure_window_4", "closure_window_8"]
    print(f"\ntest split, mean [min, max] over seeds {args.seeds}")
    print(f"{'method':<16}" + "".join(f"{c:>26}" for c in cols))
    for name, row in table.items():
        cells = "".join(f"{'—':>26}" if c not in row else
                        f"{row[c]['mean']:>9.3f} [{row[c]['min']:.3f}, {row[c]['max']:.3f}]" for c in cols)
        print(f"{name:<16}{cells}")

    # ---- paired differences: the chosen RET minus each baseline, and the variant ablations minus the default
    ret_runs = [[np.asarray(g) for g in runs[chosen, s]["test_groups"]] for s in seeds]
    diffs = {}
    for name in ("kmeans_raw", "kmeans_pca", "kmeans_window", "ema"):
        b_runs = [base_groups[s][name] for s in seeds]
        diffs[name] = {
            "all": consistency_difference(ret_runs, b_runs, seed=1),
            "generated": consistency_difference([generated_runs(r, generated) for r in ret_runs],
                                                [generated_runs(b, generated) for b in b_runs], seed=1),
        }
    default_runs = [[np.asarray(g) for g in runs["default", s]["test_groups"]] for s in seeds]
    for name in variants:
        if name == "default":
            continue
        v_runs = [[np.asarray(g) for g in runs[name, s]["test_groups"]] for s in seeds]
        diffs[f"{name}_vs_default"] = {"generated": consistency_difference(
            [generated_runs(r, generated) for r in v_runs], [generated_runs(r, generated) for r in default_runs], seed=1)}
    print(f"\nP(same next) differences on test, chosen RET ({chosen}) minus baseline [95% CI over test sequences]")
    for name, d in diffs.items():
        cells = "  ".join(f"{part}: {v['difference']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
                          for part, v in d.items())
        print(f"  {name:<26} {cells}")
    key = diffs["kmeans_window"]["generated"]["difference"]
    report("bench_ret_ablation", "ret_minus_window_p_same_next_generated", key, {
        "args": vars(args), "variants": {v: VARIANTS[v] for v in variants}, "seeds": list(seeds), "baseline_grid": list(BASELINE_GRID),
        "criterion": f"tune P(same next) on generated tokens, mean max occupancy <= {MAX_OCCUPANCY}",
        "tune_scores": scores, "chosen": chosen, "baseline_tune": {str(w): v for w, v in base_tune.items()},
        "chosen_window": best_w, "chosen_ema_half_life": best_h,
        "n_sequences": {"train": len(tr), "tune": len(tune), "test": len(test)},
        "test_table": table, "differences": diffs,
        "train_seconds": {f"{n}_seed{s}": runs[n, s]["train_seconds"] for n, s in runs},
    })


if __name__ == "__main__":
    main()
