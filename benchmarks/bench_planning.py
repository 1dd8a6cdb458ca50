"""Planning analyses at full size: small GPTs trained on grammar and path-finding, then horizon / branch / history.

In one run, for each task (grammar; path-finding short, 4 nodes per path; optionally long, 6):
  1. train a small Llama-style GPT (4 layers, 64 wide) with `ret-train task` (Lightning, CPU),
     unless --models points at already trained model directories;
  2. `run_planning`: held-out accuracy, trajectories, VQ probes, every MI with a
     bootstrap CI and its permutation-null level;
  3. baseline in the same run: the same analyses on an *untrained* model of the
     same shape (what the probes report when there is no plan to find).
Prints the horizon curves side by side (with the MI given the tokens read and
predicted, which removes copying), the paired branch test (drift-corrected
MI(prefix; unused) - MI(prefix; decoy) with its CI and paired-permutation p,
trained vs untrained) and ends with `pathfinding_branch_mi_diff: <value>`
(short paths, trained model; nan when too few answers for the test).

    .venv/bin/python benchmarks/bench_planning.py [--long] [--mtp-heads 2] [--models '{"pathfinding4": DIR}']
        [--regime-models '{"reverse": DIR}']    # other regimes' path-finding models in the branch table
Writes benchmarks/results/bench_planning.json and the figures to benchmarks/results/planning.html.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_threads_arg, report, untrained_task_model  # noqa: E402

from ret_toolkit.planning import PlanningInputs, ProbeSettings, run_planning, train_task  # noqa: E402
from ret_toolkit.planning.datamodule import task_settings  # noqa: E402
from ret_toolkit.viz import write_planning_report  # noqa: E402


def train(task: str, path_nodes: int, args, root: Path) -> tuple[str, float]:
    """Train with ret_toolkit.planning.train_task (what ret-train task fit runs); returns (model dir, seconds)."""
    t0 = time.perf_counter()
    run = train_task(task, data={"path_nodes": path_nodes, "n_train": args.n_train, "n_val": 500,
                                 "batch_size": args.batch_size},
                     model={"lr": args.lr, "mtp_heads": args.mtp_heads, "n_layer": args.layers, "n_embd": args.width},
                     max_epochs=args.epochs, root_dir=root, progress=False)
    print(f"  trained {task}/{path_nodes}: accuracy by epoch {[round(a, 3) for a in run.accuracy]}, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return str(run.model_dir), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", action="store_true", help="also the long path-finding variant (6 nodes per path)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-train", type=int, default=100000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--mtp-heads", type=int, default=0)
    ap.add_argument("--n", type=int, default=2000, help="held-out samples traced per task")
    ap.add_argument("--probe-epochs", type=int, default=10)
    ap.add_argument("--models", type=json.loads, default={}, help='JSON {"grammar": dir, "pathfinding4": dir, ...} to skip training')
    ap.add_argument("--regime-models", type=json.loads, default={},
                    help='JSON {"reverse": dir, ...}: path-finding models of other training regimes '
                         '(bench_pathfinding_first_hop.py trains them), whose branch test joins the table')
    ap.add_argument("--work", default="benchmarks/results/planning_runs")
    add_threads_arg(ap, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    settings = ProbeSettings(epochs=args.probe_epochs)
    runs = [("grammar", 4), ("pathfinding", 4)] + ([("pathfinding", 6)] if args.long else [])
    results, baselines, timing = [], {}, {}
    for task, nodes in runs:
        key = task if task == "grammar" else f"{task}{nodes}"
        print(f"{key}:", flush=True)
        if key in args.models:
            model_dir = args.models[key]
        else:
            model_dir, timing[key] = train(task, nodes, args, work / key)
        r = run_planning(PlanningInputs(model=model_dir, task=task, out=str(work / key / "analysis"), n=args.n,
                                        path_nodes=nodes), settings, progress=False)
        results.append(r)
        if task == "pathfinding":
            untrained = untrained_task_model(task, nodes, args.layers, args.width, work / key / "untrained")
            b = run_planning(PlanningInputs(model=untrained, task=task, out=str(work / key / "analysis_untrained"),
                                            n=args.n, path_nodes=nodes), settings, progress=False)
            baselines[key] = b["branch"]
        print(f"  accuracy {r['accuracy']['accuracy']:.3f}, analyses {r['seconds']:.0f} s", flush=True)
    regimes = {}
    for name, model_dir in args.regime_models.items():
        nodes = int(task_settings(model_dir).get("path_nodes", 4))
        print(f"regime {name} (path-finding {nodes}):", flush=True)
        r = run_planning(PlanningInputs(model=model_dir, task="pathfinding", out=str(work / f"regime_{name}" / "analysis"),
                                        n=args.n, path_nodes=nodes), settings, progress=False)
        regimes[name] = {"model": model_dir, "path_nodes": nodes, "accuracy": r["accuracy"], "branch": r["branch"]}
        print(f"  accuracy {r['accuracy']['accuracy']:.3f}, analyses {r['seconds']:.0f} s", flush=True)

    print("\nhorizon nMI [95% CI] / MI vs its permutation-null mean / MI given the tokens read and predicted (null), bits")
    for r in results:
        name = r["task"] if r["task"] == "grammar" else f"path-finding {r['path_nodes']}"
        cells = "  ".join(f"τ{c['tau']}: {c['nmi']:.3f} [{c['nmi_ci_low']:.3f},{c['nmi_ci_high']:.3f}] / "
                          f"{c['mi']:.3f} vs {c['null_mean']:.3f} / {c['given_tokens']['cmi']:.3f} "
                          f"({c['given_tokens']['null_mean']:.3f})" for c in r["horizon"]["curve"])
        print(f"  {name:<16} acc {r['accuracy']['accuracy']:.3f}  {cells}")
    diff_short = float("nan")
    print("\nbranch awareness: MI(prefix; unused correct path) - MI(prefix; decoy), drift-corrected [95% CI], paired p")
    for r in results:
        if r["task"] != "pathfinding":
            continue
        key = f"pathfinding{r['path_nodes']}"
        rows = [("trained", r["branch"]), ("untrained", baselines[key])]
        rows += [(f"{name} regime", g["branch"]) for name, g in regimes.items() if g["path_nodes"] == r["path_nodes"]]
        for name, b in rows:
            p = b["paired"]
            if p is None:
                print(f"  {key} {name}: not tested ({b['note']})")
                continue
            ratio = "n/a" if p["ratio"] is None else f"{p['ratio']:.2f}"
            print(f"  {key} {name}: {p['difference']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] p={p['p_value']:.3g} "
                  f"(n={p['n']}; unused {p['mi_unused']:.3f} vs floor {p['null_unused']:.3f}, "
                  f"decoy {p['mi_decoy']:.3f} vs {p['null_decoy']:.3f}; ratio {ratio})")
            if name == "trained" and r["path_nodes"] == 4:
                diff_short = p["difference"]
    grammar = next(r for r in results if r["task"] == "grammar")["horizon"]["curve"]
    decay = grammar[-1]["nmi"] / grammar[0]["nmi"] if grammar[0]["nmi"] else float("nan")
    print(f"grammar horizon nMI(τ={grammar[-1]['tau']}) / nMI(τ=1): {decay:.3f}")
    write_planning_report(RESULTS / "planning.html", results)
    report("bench_planning", "pathfinding_branch_mi_diff", diff_short, {
        "args": vars(args), "train_seconds": timing, "results": [r.to_json() for r in results], "untrained_branch": baselines,
        "grammar_horizon_decay": decay, "regimes": regimes,
    })


if __name__ == "__main__":
    main()
