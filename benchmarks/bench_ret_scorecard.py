"""RET's scorecard on two real models: what its macrostates carry beyond the token, against every baseline, with paired CIs.

Protocol (fixed before any run):
  - models and data: SmolLM2-135M-Instruct (embedded) and Gemma 3 270M (GGUF), each on the
    demo's 276 reasoning prompts (8 categories), 48 generated tokens, layers m - 2, m, m + 2
    around the middle block m (``benchmarks/scorecard_stores.py``). Sequences are split once
    (seed 0) into 60 % train, 20 % tune, 20 % test, as in ``bench_ret_ablation.py``.
  - RET variants, each with seeds 0, 1, 2 and 8 epochs: the default (window 8, K = 8, a
    predictor told the horizon tau), window 16 with K = 4 (where the ablation pointed), the
    three stored layers as input, VICReg terms (var 1, cov 0.04). Baselines get the same
    budget of 4 settings: the window mean's w and the EMA's half-life in {4, 8, 16, 24};
    k-means on h and on PCA_d(h) have none. k = 12 macrostates for all. The baselines see the
    chosen RET variant's input (its layers, standardised alike).
  - criterion, read on tune only: predictive information beyond the token at tau = 4
    (held-out bits, all tokens; for RET the mean over seeds), among settings whose largest
    group holds at most 50 % of the generated tokens on average.
  - test, read once: every row of :mod:`ret_toolkit.macro.scorecard` (consistency,
    abstraction, predictive information at tau = 1, 4, 16, semantic information about the
    prompt's category), on all and on generated tokens, per method as mean [min, max] over
    seeds, and the chosen RET minus each chosen baseline with a paired bootstrap CI over
    test sequences (runs paired by seed); closure gaps (whole window, 1/4/8 tokens ahead) as
    mean [min, max] over seeds (no per-sequence pairing: no verdict).

    .venv/bin/python benchmarks/scorecard_stores.py          # the two stores, ~10 min
    .venv/bin/python benchmarks/bench_ret_scorecard.py [--models smollm2,gemma3] [--epochs 8]

Finished runs are kept under --work and reused. Writes benchmarks/results/bench_ret_scorecard.json;
last line ``ret_minus_best_predictive_4_bits: <value>`` (the first model's chosen RET minus the
best baseline on predictive information at tau = 4, all tokens, test split).
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
from bench_ret_ablation import split  # noqa: E402  (the same train / tune / test split)
from scorecard_stores import MODELS, build_store  # noqa: E402

from activation_cache import TrajectoryStore  # noqa: E402
from ret_toolkit.macro import (  # noqa: E402
    EvaluationSettings, evaluate_sequences, load_ret, ret_groups, train,
)
from ret_toolkit.macro.beyond_token import future_triples, heldout_gain  # noqa: E402
from ret_toolkit.macro.scorecard import Sequences, method_rows, paired_rows, verdict  # noqa: E402

VARIANTS = {
    "default": {},
    "window16_K4": {"data": {"window": 16, "max_horizon": 4}},
    "layers3": {"layers": "stored"},
    "vicreg": {"model": {"var_weight": 1.0, "cov_weight": 0.04}},
}
SEEDS = (0, 1, 2)
GRID = (4, 8, 16, 24)
BASELINES = ("kmeans_raw", "kmeans_pca", "kmeans_window", "ema")
TAUS = (1, 4, 16)
CRITERION = "predictive_4_bits"
MAX_OCCUPANCY = 0.5
K = 12


def sides(store_path: str, seqs: dict[str, np.ndarray]) -> dict[str, Sequences]:
    """Tokens, generated masks and category codes of each named set of sequences."""
    with TrajectoryStore(store_path) as store:
        cats = store.meta_column("category")
        codes = {c: i for i, c in enumerate(sorted(set(cats)))}
        return {name: Sequences([store.tokens(int(s)) for s in idx], [store.generated(int(s)).astype(bool) for s in idx],
                                np.array([codes[cats[int(s)]] for s in idx])) for name, idx in seqs.items()}


def groups_on(module, store_path: str, tr, seqs: np.ndarray, settings: EvaluationSettings) -> dict[str, list]:
    """Every method's groups on ``seqs`` (RET's from ``module``, baselines fitted on ``tr``), as lists."""
    with TrajectoryStore(store_path) as store:
        ev = evaluate_sequences(module, store, tr, seqs, settings)
    return {name: [g.tolist() for g in gs] for name, gs in ev.groups.items()}


def run_variant(model: str, rec: dict, name: str, seed: int, args, work: Path) -> dict:
    """Train one RET variant with one seed (or reuse the finished run): its groups on every sequence."""
    cache = work / model / f"{name}_seed{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    spec = VARIANTS[name]
    layers = ",".join(rec["layers"]) if spec.get("layers") == "stored" else rec["middle"]
    t0 = time.perf_counter()
    res = train([rec["store"]], layers=layers, data={"val_fraction": 0.4, "split_seed": 0, **spec.get("data", {})},
                model=spec.get("model"), max_epochs=args.epochs, root_dir=work / model / "runs" / f"{name}_seed{seed}",
                seed=seed, progress=False)
    train_s = time.perf_counter() - t0
    tr, tune, test = split(rec["store"], res.checkpoint)
    every = np.concatenate([tr, tune, test])
    with TrajectoryStore(rec["store"]) as store:
        g = [x.tolist() for x in ret_groups(load_ret(res.checkpoint), store, tr, every, K, seed)[1]]
    out = {"variant": name, "seed": seed, "layers": layers, "train_seconds": train_s, "checkpoint": str(res.checkpoint),
           "sequences": every.tolist(), "groups": g}
    cache.write_text(json.dumps(out))
    return out


def baseline_groups(model: str, rec: dict, w: int, seed: int, work: Path, run: dict) -> dict:
    """The baselines' groups on every sequence with window / half-life ``w`` and k-means seed ``seed``, on the
    input of the RET ``run`` (its layers, standardised as it standardises them)."""
    ckpt = run["checkpoint"]
    cache = work / model / f"baselines_{run['variant']}_w{w}_seed{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    tr, tune, test = split(rec["store"], ckpt)
    every = np.concatenate([tr, tune, test])
    g = groups_on(load_ret(ckpt), rec["store"], tr, every,
                  EvaluationSettings(K, seed, window=w, ema_half_life=w, closure=False))
    out = {"w": w, "seed": seed, "sequences": every.tolist(), "groups": {b: g[b] for b in BASELINES}}
    cache.write_text(json.dumps(out))
    return out


def pick(groups: list, sequences: list, idx: np.ndarray) -> list[np.ndarray]:
    where = {s: i for i, s in enumerate(sequences)}
    return [np.asarray(groups[where[int(s)]]) for s in idx]


def tune_value(fit_g, tune_g, data: dict) -> tuple[float, float]:
    """(criterion, max occupancy on generated tokens) of one grouping on the tuning sequences."""
    fit, tune = data["train"], data["tune"]
    gain = heldout_gain(future_triples(fit_g, fit.tokens, 4), future_triples(tune_g, tune.tokens, 4))
    generated = np.concatenate([np.asarray(g)[m] for g, m in zip(tune_g, tune.mask("generated"))]).astype(np.int64)
    return float(gain.mean()), float(np.bincount(generated, minlength=K).max() / generated.size)


def eligible_mean(values: list[tuple[float, float]]) -> float:
    crit, occ = zip(*values)
    return float(np.mean(crit)) if np.mean(occ) <= MAX_OCCUPANCY else float("-inf")


def closure_table(model: str, rec: dict, chosen: str, runs: dict, best: dict, tr, test, work: Path) -> dict:
    """Closure gaps on test per method and seed (the chosen RET's checkpoint; baselines at their chosen settings)."""
    cache = work / model / f"closure_{chosen}_w{best['kmeans_window']}_h{best['ema']}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = {}
    for s in SEEDS:
        r = runs[chosen, s]
        with TrajectoryStore(rec["store"]) as store:
            ev = evaluate_sequences(load_ret(r["checkpoint"]), store, tr, test,
                                    EvaluationSettings(K, s, window=best["kmeans_window"], ema_half_life=best["ema"]))
        out[str(s)] = {"closure_gap": ev.metrics["closure_gap"], "closure_window": ev.metrics["closure_window"]}
    cache.write_text(json.dumps(out))
    return out


def summarize(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def score_model(model: str, args, work: Path) -> dict:
    rec = build_store(model, work)
    print(f"\n== {model}: {rec['n_sequences']} sequences, {rec['n_tokens']} tokens, layers {rec['layers']}", flush=True)
    runs = {}
    for name in args.variants:
        for seed in SEEDS:
            runs[name, seed] = run_variant(model, rec, name, seed, args, work)
            print(f"{name:<12} seed {seed}: train {runs[name, seed]['train_seconds']:.0f} s", flush=True)
    ref = runs["default", 0]
    tr, tune, test = split(rec["store"], ref["checkpoint"])
    data = sides(rec["store"], {"train": tr, "tune": tune, "test": test})

    # ---- choices on the tuning split only
    tune_scores = {}
    for name in args.variants:
        vals = [tune_value(pick(runs[name, s]["groups"], runs[name, s]["sequences"], tr),
                           pick(runs[name, s]["groups"], runs[name, s]["sequences"], tune), data) for s in SEEDS]
        tune_scores[name] = {"criterion": eligible_mean(vals), "by_seed": [v[0] for v in vals],
                             "max_occupancy_generated": [v[1] for v in vals]}
    chosen = max(args.variants, key=lambda n: tune_scores[n]["criterion"])  # ties keep the first: default
    base_tune = {}
    for w in GRID:
        bg = baseline_groups(model, rec, w, 0, work, runs[chosen, 0])
        base_tune[w] = {b: eligible_mean([tune_value(pick(bg["groups"][b], bg["sequences"], tr),
                                                     pick(bg["groups"][b], bg["sequences"], tune), data)])
                        for b in ("kmeans_window", "ema")}
    best = {b: max(GRID, key=lambda w: base_tune[w][b]) for b in ("kmeans_window", "ema")}
    print(f"chosen on tune: RET {chosen} ({tune_scores[chosen]['criterion']:.4f} bits); window mean w={best['kmeans_window']}, "
          f"EMA half-life {best['ema']}", flush=True)

    # ---- test: every method, every seed
    method_runs = {"ret": [], **{b: [] for b in BASELINES}}
    for s in SEEDS:
        r = runs[chosen, s]
        method_runs["ret"].append((pick(r["groups"], r["sequences"], tr), pick(r["groups"], r["sequences"], test)))
        by_w = {w: baseline_groups(model, rec, w, s, work, r)
                for w in {GRID[0], best["kmeans_window"], best["ema"]}}
        for b in BASELINES:
            bg = by_w[best.get(b, GRID[0])]
            method_runs[b].append((pick(bg["groups"][b], bg["sequences"], tr), pick(bg["groups"][b], bg["sequences"], test)))
    rows = {m: [method_rows(f, t, data["train"], data["test"], K, TAUS, n_permutations=args.permutations, seed=i)
                for i, (f, t) in enumerate(rs)] for m, rs in method_runs.items()}
    table = {m: {part: {row: summarize([r[part][row] for r in rs]) for row in rs[0][part] if not row.endswith("_detail")}
                 for part in ("all", "generated")} for m, rs in rows.items()}
    details = {m: [{part: {k: v for k, v in r[part].items() if k.endswith("_detail")} for part in r} for r in rs]
               for m, rs in rows.items()}
    diffs = {b: paired_rows(method_runs["ret"], method_runs[b], data["train"], data["test"], TAUS, n_boot=args.n_boot)
             for b in BASELINES}
    verdicts = {b: {part: {row: verdict(row, d) for row, d in parts.items()} for part, parts in diffs[b].items()}
                for b in BASELINES}
    closure = closure_table(model, rec, chosen, runs, best, tr, test, work)
    closure_rows = {}
    for m in ("ret", "kmeans_pca", "kmeans_window", "ema"):
        closure_rows[m] = {"closure_gap_token_1": summarize([closure[str(s)]["closure_gap"][m] for s in SEEDS])}
        for tau in ("1", "4", "8"):
            closure_rows[m][f"closure_window_{tau}"] = summarize(
                [closure[str(s)]["closure_window"][tau][m]["gap"] for s in SEEDS])

    print(f"\n{model}, test split: RET ({chosen}) minus each baseline [95% CI over test sequences]")
    for part in ("all", "generated"):
        print(f"  {part} tokens")
        for row in diffs[BASELINES[0]][part]:
            cells = "  ".join(f"{b} {diffs[b][part][row]['difference']:+.4f} [{diffs[b][part][row]['ci_low']:+.4f}, "
                              f"{diffs[b][part][row]['ci_high']:+.4f}] {verdicts[b][part][row]}" for b in BASELINES)
            print(f"    {row:<20} RET {table['ret'][part][row]['mean']:.4f}  {cells}", flush=True)
    return {"store": rec, "n_sequences": {"train": len(tr), "tune": len(tune), "test": len(test)},
            "tune_scores": tune_scores, "chosen": chosen, "baseline_tune": {str(w): v for w, v in base_tune.items()},
            "chosen_settings": best, "table": table, "information_details": details, "differences": diffs,
            "verdicts": verdicts, "closure": closure_rows,
            "train_seconds": {f"{n}_seed{s}": r["train_seconds"] for (n, s), r in runs.items()}}


def best_baseline_difference(res: dict, part: str, row: str) -> dict:
    """RET minus the baseline that scores best on ``row`` (by its mean over seeds): its difference and CI."""
    higher = row != "token_mi_bits"
    means = {b: res["table"][b][part][row]["mean"] for b in BASELINES}
    b = max(means, key=means.get) if higher else min(means, key=means.get)
    return {"baseline": b, **{k: res["differences"][b][part][row][k] for k in ("difference", "ci_low", "ci_high")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--work", default="benchmarks/results/ret_scorecard_runs")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (must include default)")
    ap.add_argument("--permutations", type=int, default=20, help="permutations of each information row's null")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    if "default" not in args.variants or set(args.variants) - set(VARIANTS):
        sys.exit(f"bench_ret_scorecard: --variants must include default and name only {', '.join(VARIANTS)}")
    torch.set_num_threads(2)
    work = Path(args.work)
    results = {m: score_model(m, args, work) for m in args.models.split(",")}
    summary = {m: {part: {row: best_baseline_difference(r, part, row) for row in r["differences"][BASELINES[0]][part]}
                   for part in ("all", "generated")} for m, r in results.items()}
    first = next(iter(results))
    report("bench_ret_scorecard", "ret_minus_best_predictive_4_bits", summary[first]["all"][CRITERION]["difference"], {
        "args": {k: v for k, v in vars(args).items()}, "variants": {v: VARIANTS[v] for v in args.variants},
        "seeds": list(SEEDS), "grid": list(GRID), "taus": list(TAUS), "k": K,
        "criterion": f"tune {CRITERION} (held-out bits, all tokens), mean max occupancy on generated <= {MAX_OCCUPANCY}",
        "models": results, "ret_minus_best_baseline": summary})


if __name__ == "__main__":
    main()
