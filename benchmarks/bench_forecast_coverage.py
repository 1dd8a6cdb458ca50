"""Do the forecaster's AUROC CIs cover chance when there is nothing to forecast? Fixed-score vs refitting bootstrap.

Planted worlds with the sycophancy design (60 conversations x 4 pushback templates): labels
independent of every feature (the null), then worlds with a modest planted signal (power).
Each world is a :class:`ForecastData` scored by :func:`evaluate_forecast` exactly as
``ret-forecast`` scores a store: the ``ret`` slot holds 6 noise features (the planted
signal goes into one of them), ``design`` the template one-hot, ``raw_pca`` / ``length``
more noise. Both CI methods on the same worlds in the same run:

  * ``ci="fixed"``: resample conversations, the fitted scores held fixed;
  * ``ci="refit"`` (the default): resample conversations and rerun the grouped CV.

Reports, per method, the share of null worlds whose AUROC CI covers 0.5 (nominal 0.95; for
the noise probe and the design probe), whose paired CI of RET − design covers 0, and the
share of planted worlds whose CI lies above 0.5. Ends with
``forecast_refit_ci_null_coverage: <value>`` (the noise probe, refitting bootstrap).

    .venv/bin/python benchmarks/bench_forecast_coverage.py [--worlds 40] [--bootstrap 100]
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

from ret_toolkit.sycophancy import ForecastData, evaluate_forecast  # noqa: E402

METHODS = ("fixed", "refit")


def world(seed: int, signal: float, n_conv: int = 60, n_templates: int = 4) -> ForecastData:
    """One planted world; ``signal`` shifts the first ``ret`` feature by the label (0: the null)."""
    rng = np.random.default_rng(seed)
    n = n_conv * n_templates
    y = rng.integers(0, 2, n)
    ret = rng.normal(size=(n, 6)).astype(np.float32)
    ret[:, 0] += signal * (2 * y - 1)
    noise = rng.normal(size=(n, 6)).astype(np.float32)
    design = np.eye(n_templates, dtype=np.float32)[np.tile(np.arange(n_templates), n_conv)]
    feats = {"ret": {0: ret}, "raw_pca": {0: noise}, "length": {0: noise[:, :2]}, "design": {0: design}}
    return ForecastData(ids=np.arange(n).astype(object), conversations=np.repeat(np.arange(n_conv), n_templates),
                        y=y, leads=(0,), features=feats, n_prompt=np.full(n, 10), n_reply=np.full(n, 5))


def covers(c: dict, value: float, low: str = "ci_low", high: str = "ci_high") -> bool:
    return c[low] <= value <= c[high]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=40)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--signal", type=float, default=0.35, help="planted shift of one ret feature (power worlds)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for w in range(args.worlds):
        for kind, signal in (("null", 0.0), ("planted", args.signal)):
            data = world(1000 + w, signal)
            for method in METHODS:
                r = evaluate_forecast(data, repeats=1, n_boot=args.bootstrap, seed=w, progress=False, ci=method)
                a, d = r["auroc"], r["differences"]["ret-design"]["0"]
                rows.append({"world": w, "kind": kind, "method": method,
                             "ret": [a["ret"]["0"][x] for x in ("mean", "ci_low", "ci_high")],
                             "design": [a["design"]["0"][x] for x in ("mean", "ci_low", "ci_high")],
                             "ret_minus_design": [d[x] for x in ("diff", "ci_low", "ci_high")]})
        print(f"world {w + 1}/{args.worlds} ({time.perf_counter() - t0:.0f} s)", flush=True)

    summary = {}
    for method in METHODS:
        null = [r for r in rows if r["kind"] == "null" and r["method"] == method]
        planted = [r for r in rows if r["kind"] == "planted" and r["method"] == method]
        summary[method] = {
            "null_ret_covers_chance": float(np.mean([r["ret"][1] <= 0.5 <= r["ret"][2] for r in null])),
            "null_design_covers_chance": float(np.mean([r["design"][1] <= 0.5 <= r["design"][2] for r in null])),
            "null_difference_covers_zero": float(np.mean([r["ret_minus_design"][1] <= 0 <= r["ret_minus_design"][2]
                                                          for r in null])),
            "planted_ret_above_chance": float(np.mean([r["ret"][1] > 0.5 for r in planted])),
            "null_ret_mean_width": float(np.mean([r["ret"][2] - r["ret"][1] for r in null])),
            "n_worlds": len(null)}
        m = summary[method]
        print(f"{method:<6} null: RET CI covers 0.5 in {m['null_ret_covers_chance']:.3f}, design "
              f"{m['null_design_covers_chance']:.3f}, RET − design CI covers 0 in {m['null_difference_covers_zero']:.3f} "
              f"(mean RET CI width {m['null_ret_mean_width']:.3f}); planted: RET CI above 0.5 in "
              f"{m['planted_ret_above_chance']:.3f} of {m['n_worlds']} worlds")
    report("bench_forecast_coverage", "forecast_refit_ci_null_coverage", summary["refit"]["null_ret_covers_chance"],
           {"args": vars(args), "summary": summary, "rows": rows, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
