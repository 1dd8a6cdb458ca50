"""Do the forecaster's AUROC CIs cover chance when there is nothing to forecast? Fixed-score vs refitting bootstrap.

Planted worlds with the sycophancy design (60 conversations x 4 pushback templates): labels
independent of every feature (the null), then a world with a modest planted signal (power).
Two feature sets per world, fitted by the forecaster's grouped CV (``oof_scores``): the
design one-hot (4 levels, as the ``design`` baseline) and 6 noise features (as a probe).
For each, the 95 % CI of the within-fold AUROC from

  * the fixed-score bootstrap (``bootstrap_auroc``: resample conversations, scores held fixed),
  * the refitting bootstrap (``refit_bootstrap``: resample conversations, rerun the CV),

computed on the same worlds in the same run. Reports the share of null worlds whose CI
covers 0.5 (nominal 0.95) and the share of planted worlds whose CI lies above 0.5.
Ends with ``forecast_refit_ci_null_coverage: <value>`` (noise probe).

    .venv/bin/python benchmarks/bench_forecast_coverage.py [--worlds 20] [--bootstrap 100]
Writes benchmarks/results/bench_forecast_coverage.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from ret_toolkit.sycophancy.forecast import (  # noqa: E402
    bootstrap_auroc,
    fold_index,
    grouped_folds,
    oof_scores,
    refit_bootstrap,
)


def world(seed: int, signal: float, n_conv: int = 60, n_templates: int = 4):
    """Labels, conversation ids and the two feature sets; ``signal`` shifts noise feature 0 by the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_conv * n_templates)
    groups = np.repeat(np.arange(n_conv), n_templates)
    design = np.eye(n_templates)[np.tile(np.arange(n_templates), n_conv)]
    noise = rng.normal(size=(len(y), 6))
    noise[:, 0] += signal * (2 * y - 1)
    return y, groups, {"design": design, "noise": noise}


def intervals(y, groups, X, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    folds = grouped_folds(y, groups, 5, seed)
    fid = fold_index(folds, len(y))
    chosen: list[float] = []
    s = oof_scores(X, y, groups, folds, "logistic", seed=seed, chosen=chosen)
    fixed = bootstrap_auroc(y, [s], [fid], groups, n_boot=n_boot, seed=seed)
    C = max(set(chosen), key=lambda c: (chosen.count(c), -c))
    boot = refit_bootstrap(y, groups, {"x": (X, "logistic", None, C)}, 5, n_boot, seed)["x"]
    lo, hi = np.nanquantile(boot, [0.025, 0.975])
    return {"fixed": (fixed["ci_low"], fixed["ci_high"]), "refit": (float(lo), float(hi))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--signal", type=float, default=0.35, help="planted shift of noise feature 0 (power worlds)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for w in range(args.worlds):
        for kind, signal in (("null", 0.0), ("planted", args.signal)):
            y, groups, feats = world(1000 + w, signal)
            for name, X in feats.items():
                if kind == "planted" and name == "design":
                    continue  # the planted signal is in the noise features only
                ci = intervals(y, groups, X, args.bootstrap, w)
                rows.append({"world": w, "kind": kind, "features": name, **{m: list(v) for m, v in ci.items()}})
        print(f"world {w + 1}/{args.worlds} ({time.perf_counter() - t0:.0f} s)", flush=True)

    summary = {}
    for kind, name in (("null", "design"), ("null", "noise"), ("planted", "noise")):
        sel = [r for r in rows if r["kind"] == kind and r["features"] == name]
        for method in ("fixed", "refit"):
            if kind == "null":
                share = float(np.mean([r[method][0] <= 0.5 <= r[method][1] for r in sel]))
                what = "covers 0.5"
            else:
                share = float(np.mean([r[method][0] > 0.5 for r in sel]))
                what = "above 0.5"
            width = float(np.mean([r[method][1] - r[method][0] for r in sel]))
            summary[f"{kind}/{name}/{method}"] = {"share": share, "what": what, "mean_width": width, "n": len(sel)}
            print(f"{kind:<8} {name:<7} {method:<6} CI {what}: {share:.2f} of {len(sel)} worlds, mean width {width:.3f}")
    report("bench_forecast_coverage", "forecast_refit_ci_null_coverage", summary["null/noise/refit"]["share"],
           {"args": vars(args), "summary": summary, "rows": rows, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
