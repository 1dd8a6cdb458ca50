"""Mutual information of 10^7 pairs over 1024 x 1024 symbols: ours versus scikit-learn.

Same seeded data for both, timed in ``--reps`` interleaved pairs (A then B, B then A, ...):
  A. ``ret_toolkit.info.mutual_information(x, y, "miller_madow")`` (bincount on a joint index);
  B. ``sklearn.metrics.mutual_info_score(x, y)`` (plug-in, nats; converted to bits).
Input validation is inside A's time; data generation and a tiny warm-up call are outside both.

    .venv/bin/python benchmarks/bench_mi.py
Last line: `mi_speedup_vs_sklearn: <median over pairs of time B / time A>` (target >= 20),
with the range of the per-pair ratios printed above it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from ret_toolkit.info import mutual_information  # noqa: E402


def make_pairs(n: int, symbols: int, p_copy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x uniform; y = x with probability p_copy, else uniform and independent."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, symbols, size=n)
    y = np.where(rng.random(n) < p_copy, x, rng.integers(0, symbols, size=n))
    return x, y


def true_mi_bits(symbols: int, p_copy: float) -> float:
    """Analytic I(X;Y) = H(Y) - H(Y|X) of :func:`make_pairs`."""
    off = (1 - p_copy) / symbols
    row = np.array([p_copy + off] + [off] * (symbols - 1))
    return float(np.log2(symbols) + np.sum(row * np.log2(row)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--symbols", type=int, default=1024)
    ap.add_argument("--p-copy", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5, help="interleaved pairs of timings (default 5)")
    args = ap.parse_args()

    from sklearn.metrics import mutual_info_score

    x, y = make_pairs(args.n, args.symbols, args.p_copy, args.seed)
    truth = true_mi_bits(args.symbols, args.p_copy)

    # Warm both paths on a few pairs so lazy imports and first-call set-up stay out of the timings.
    mutual_information(x[:1000], y[:1000], estimator="miller_madow")
    mutual_info_score(x[:1000], y[:1000])

    def ours_run() -> float:
        return mutual_information(x, y, estimator="miller_madow")

    def sklearn_run() -> float:
        return mutual_info_score(x, y) / np.log(2)

    times = {"ours": [], "sklearn": []}
    for rep in range(args.reps):
        for name, fn in ((("ours", ours_run), ("sklearn", sklearn_run)) if rep % 2 == 0
                         else (("sklearn", sklearn_run), ("ours", ours_run))):
            t0 = time.perf_counter()
            value = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "ours":
                ours = value
            else:
                theirs = value
    ratios = [b / a for a, b in zip(times["ours"], times["sklearn"])]
    t_ours, t_sklearn = float(np.median(times["ours"])), float(np.median(times["sklearn"]))

    print(f"pairs: {args.n:,}  symbols: {args.symbols} x {args.symbols}  true MI: {truth:.5f} bits")
    print(f"ret_toolkit miller_madow: median {t_ours:.3f} s  MI = {ours:.5f} bits")
    print(f"sklearn mutual_info_score: median {t_sklearn:.3f} s  MI = {theirs:.5f} bits (plug-in)")
    speedup = float(np.median(ratios))
    print(f"speed-up over {args.reps} interleaved pairs: median {speedup:.1f} (range {min(ratios):.1f}-{max(ratios):.1f})")
    report(
        "bench_mi",
        "mi_speedup_vs_sklearn",
        speedup,
        {
            "n_pairs": args.n,
            "symbols": args.symbols,
            "p_copy": args.p_copy,
            "seed": args.seed,
            "true_mi_bits": truth,
            "reps": args.reps,
            "ratios": ratios,
            "ratio_range": [min(ratios), max(ratios)],
            "ours_seconds": t_ours,
            "ours_seconds_all": times["ours"],
            "ours_mi_bits_miller_madow": ours,
            "sklearn_seconds": t_sklearn,
            "sklearn_seconds_all": times["sklearn"],
            "sklearn_mi_bits_plugin": float(theirs),
        },
    )


if __name__ == "__main__":
    main()
