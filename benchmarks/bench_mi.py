"""Mutual information of 10^7 pairs over 1024 x 1024 symbols: ours versus scikit-learn.

Same seeded data for both, one timed run each:
  A. ``ret_toolkit.info.mutual_information(x, y, "miller_madow")`` (bincount on a joint index);
  B. ``sklearn.metrics.mutual_info_score(x, y)`` (plug-in, nats; converted to bits).
Input validation is inside A's time; data generation and a tiny warm-up call are outside both.

    .venv/bin/python benchmarks/bench_mi.py
Last line: `mi_speedup_vs_sklearn: <time B / time A>` (target >= 20).
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
    args = ap.parse_args()

    from sklearn.metrics import mutual_info_score

    x, y = make_pairs(args.n, args.symbols, args.p_copy, args.seed)
    truth = true_mi_bits(args.symbols, args.p_copy)

    # Warm both paths on a few pairs so lazy imports and first-call set-up stay out of the timings.
    mutual_information(x[:1000], y[:1000], estimator="miller_madow")
    mutual_info_score(x[:1000], y[:1000])

    t0 = time.perf_counter()
    ours = mutual_information(x, y, estimator="miller_madow")
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    theirs = mutual_info_score(x, y) / np.log(2)
    t_sklearn = time.perf_counter() - t0

    print(f"pairs: {args.n:,}  symbols: {args.symbols} x {args.symbols}  true MI: {truth:.5f} bits")
    print(f"ret_toolkit miller_madow: {t_ours:.3f} s  MI = {ours:.5f} bits")
    print(f"sklearn mutual_info_score: {t_sklearn:.3f} s  MI = {theirs:.5f} bits (plug-in)")
    speedup = t_sklearn / t_ours
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
            "ours_seconds": t_ours,
            "ours_mi_bits_miller_madow": ours,
            "sklearn_seconds": t_sklearn,
            "sklearn_mi_bits_plugin": float(theirs),
        },
    )


if __name__ == "__main__":
    main()
