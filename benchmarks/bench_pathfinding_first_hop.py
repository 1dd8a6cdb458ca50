"""Does a path-finding model read the goal? The goal-swap gate for every training regime.

For each regime of ``ret_toolkit.planning.regimes.REGIMES`` (plain next-token training
first; online fresh graphs; corrupted teacher-forced answers; teacherless; the
reversed-target positive control) this trains a small Llama-style GPT with
``train_task`` (cached under ``--work``; ``--models`` reuses trained directories)
and measures on held-out graphs:

  * valid paths: the share of greedy answers that are a start-to-goal walk;
  * the goal-swap diagnostic (``ret_toolkit.planning.goal_swap``): first-hop mass
    on the correct hops and on the decoy's, and the *shift* of the decoy's mass when
    the goal is swapped for the decoy's end, with bootstrap CIs. A model uses the
    goal when the shift's CI lies above 0.2.

Baselines in the same run: an untrained model of the same shape, and the
goal-blind split (2/3 correct, 1/3 decoy, shift 0). The reversed control starts
its answer at the goal, so it has no first-hop diagnostic: its valid paths are
the positive control for training. Ends with
``pathfinding_best_goal_shift: <value>`` (the largest shift among forward regimes).

    .venv/bin/python benchmarks/bench_pathfinding_first_hop.py [--regimes ntp,online,corrupt,teacherless,reverse]
        [--models '{"ntp": DIR}'] [--epochs 4] [--n-train 100000]
Writes benchmarks/results/bench_pathfinding_first_hop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_threads_arg, report, untrained_task_model  # noqa: E402

from activation_cache import load_model  # noqa: E402
from ret_toolkit.info import bootstrap_mean_ci  # noqa: E402
from ret_toolkit.planning import goal_swap, make_task, train_task  # noqa: E402
from ret_toolkit.planning.datamodule import task_settings  # noqa: E402
from ret_toolkit.planning.decode import answers_correct, is_teacherless  # noqa: E402


def trained_model(regime: str, args, work: Path) -> tuple[str, float | None]:
    """A model directory for ``regime``: given, cached from an earlier run, or trained now."""
    if regime in args.models:
        return args.models[regime], None
    done = work / regime / "model_dir.txt"
    if done.is_file():
        return done.read_text().strip(), None
    t0 = time.perf_counter()
    run = train_task("pathfinding", regime=None if regime == "ntp" else regime,
                     data={"path_nodes": args.path_nodes, "n_train": args.n_train, "n_val": 500,
                           "batch_size": args.batch_size},
                     model={"lr": args.lr, "n_layer": args.layers, "n_embd": args.width}, max_epochs=args.epochs,
                     root_dir=work / regime, progress=False)
    seconds = time.perf_counter() - t0
    print(f"  trained {regime}: held-out accuracy by epoch {[round(a, 3) for a in run.accuracy]}, {seconds:.0f} s",
          flush=True)
    done.write_text(str(run.model_dir))
    return str(run.model_dir), seconds


def trained_epochs(model_dir: str) -> int | None:
    """Epochs the model was trained for, from the CSV log next to its exported directory (None: no log)."""
    log = Path(model_dir).parent / "metrics.csv"
    if not log.is_file():
        return None
    epochs = [int(line.split(",", 1)[0]) for line in log.read_text().splitlines()[1:] if line[:1].isdigit()]
    return max(epochs) + 1 if epochs else 0


def measure(name: str, model_dir: str, args) -> dict:
    loaded = load_model(model_dir)
    settings = task_settings(model_dir)
    reverse, teacherless = bool(settings.get("reverse", False)), is_teacherless(settings)
    task = make_task("pathfinding", args.path_nodes, reverse=reverse)
    samples = task.samples(args.n, args.seed)
    ok = np.array(answers_correct(loaded.model, loaded.tokenizer, task, samples, teacherless=teacherless), float)
    valid = {"value": float(ok.mean()), "ci": bootstrap_mean_ci(ok, seed=args.seed)}
    row = {"regime": name, "model": model_dir, "reverse": reverse, "epochs": trained_epochs(model_dir),
           "valid_paths": valid, "goal_swap": None}
    if not reverse:
        row["goal_swap"] = goal_swap(loaded.model, loaded.tokenizer, samples, seed=args.seed,
                                     teacherless=teacherless).to_json()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regimes", default="ntp,online,corrupt,teacherless,reverse")
    ap.add_argument("--models", type=json.loads, default={}, help='JSON {"regime": model dir} to skip training')
    ap.add_argument("--path-nodes", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-train", type=int, default=100000, help="samples per epoch (online: fresh ones)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--n", type=int, default=400, help="held-out graphs")
    ap.add_argument("--seed", type=int, default=1001)
    ap.add_argument("--work", default="benchmarks/results/pathfinding_runs")
    add_threads_arg(ap, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    untrained = untrained_task_model("pathfinding", args.path_nodes, args.layers, args.width, work / "untrained")
    rows, seconds = [measure("untrained", untrained, args)], {}
    for regime in args.regimes.split(","):
        print(f"{regime}:", flush=True)
        model_dir, seconds[regime] = trained_model(regime, args, work)
        rows.append(measure(regime, model_dir, args))

    print(f"\n{'regime':<12} {'valid paths':>22} {'correct mass':>13} {'decoy mass':>11} {'swapped decoy':>14} "
          f"{'shift [95% CI]':>24}  uses goal (CI > 0.2)")
    for r in rows:
        v = r["valid_paths"]
        cells = f"{r['regime']:<12} {v['value']:>8.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
        g = r["goal_swap"]
        if g is None:
            print(f"{cells} {'(reversed: the answer starts at the goal)':>64}")
            continue
        print(f"{cells} {g['correct']:>13.3f} {g['decoy']:>11.3f} {g['decoy_swapped']:>14.3f} "
              f"{g['shift']:>+8.3f} [{g['shift_ci'][0]:+.3f}, {g['shift_ci'][1]:+.3f}]  {'yes' if g['uses_goal'] else 'no'}")
    print(f"{'goal-blind':<12} {'':>22} {2 / 3:>13.3f} {1 / 3:>11.3f} {1 / 3:>14.3f} {0:>+8.3f}")
    forward = [r for r in rows if r["goal_swap"] is not None and r["regime"] != "untrained"]
    best = max(forward, key=lambda r: r["goal_swap"]["shift"]) if forward else None
    report("bench_pathfinding_first_hop", "pathfinding_best_goal_shift",
           best["goal_swap"]["shift"] if best else float("nan"),
           {"args": vars(args), "rows": rows, "best_regime": best["regime"] if best else None,
            "passing": [r["regime"] for r in forward if r["goal_swap"]["uses_goal"]], "train_seconds": seconds})


if __name__ == "__main__":
    main()
