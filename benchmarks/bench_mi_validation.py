"""VQ-code mutual information versus ground truth on synthetic sources (docs/architecture.md §3.3).

Ten sources (X, Y) with exact MI from 0 to 4 bits (support <= 16 <= the codebook
size 32). X is embedded as a block of 4 cells (2 layers x 2 positions, 64 dims),
Y as a block of 2 cells, each through a fixed random non-linear map plus a
nuisance variable and noise. For every source, in one run:
  A. a VQ model (default config) is trained on X blocks and one on Y blocks;
     Miller-Madow MI of their codes on held-out pairs, with the permutation-null level;
  B. baseline: k-means (K = 32, scikit-learn) on the flattened cells of each block,
     same MI estimator;
  C. the estimator on the true labels (the ceiling for A and B).

    .venv/bin/python benchmarks/bench_mi_validation.py [--n 8192] [--epochs 10]
Prints the table, the Spearman correlations and median relative errors of A and B
(over sources with MI >= 0.1 bit), and ends with `vq_mi_spearman: <value>`.
Targets: Spearman >= 0.95, median relative error <= 15 %, dead codes <= 10 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from ret_toolkit.info import mutual_information, permutation_test  # noqa: E402
from ret_toolkit.vq import (  # noqa: E402
    VALIDATION_SOURCES,
    RandomEmbedding,
    SymbolSource,
    dataset_codes,
    embedded_blocks,
    fit_vq,
)


def validate_source(src: SymbolSource, n: int, epochs: int, seed: int, num_codes: int = 32) -> dict:
    """Train both VQ models on one source and estimate MI three ways."""
    rng = np.random.default_rng(seed)
    x, y = src.sample(2 * n, rng)
    emb_x = RandomEmbedding(src.n_symbols, n_cells=4, seed=seed + 1)
    emb_y = RandomEmbedding(src.n_symbols, n_cells=2, seed=seed + 2)
    bx_tr, bx_te = embedded_blocks(x[:n], emb_x, seed + 3), embedded_blocks(x[n:], emb_x, seed + 4)
    by_tr, by_te = embedded_blocks(y[:n], emb_y, seed + 5), embedded_blocks(y[n:], emb_y, seed + 6)

    t0 = time.perf_counter()
    vq_x = fit_vq(bx_tr, max_epochs=epochs, seed=seed, num_codes=num_codes)
    vq_y = fit_vq(by_tr, max_epochs=epochs, seed=seed + 1, num_codes=num_codes)
    cx, cy = dataset_codes(vq_x, bx_te), dataset_codes(vq_y, by_te)
    train_s = time.perf_counter() - t0

    def kmeans_codes(tr, te):
        km = KMeans(num_codes, n_init=1, random_state=seed).fit(tr.cells.reshape(len(tr), -1).numpy())
        return km.predict(te.cells.reshape(len(te), -1).numpy())

    kx, ky = kmeans_codes(bx_tr, bx_te), kmeans_codes(by_tr, by_te)
    perm = permutation_test(cx, cy, n_permutations=200, estimator="miller_madow", seed=seed)
    return {
        "n_symbols": src.n_symbols, "eps": src.eps, "true_bits": src.true_mi_bits,
        "vq_bits": mutual_information(cx, cy, estimator="miller_madow"),
        "vq_plugin_bits": mutual_information(cx, cy),
        "vq_null_bits": perm["null_mean"], "vq_p": perm["p_value"],
        "kmeans_bits": mutual_information(kx, ky, estimator="miller_madow"),
        "labels_bits": mutual_information(x[n:], y[n:], estimator="miller_madow"),
        "dead_code_fraction": max(vq_x.health_history[-1]["dead_code_fraction"], vq_y.health_history[-1]["dead_code_fraction"]),
        "code_perplexity": min(vq_x.health_history[-1]["code_perplexity"], vq_y.health_history[-1]["code_perplexity"]),
        "recon_ev": min(vq_x.health_history[-1]["recon_ev"], vq_y.health_history[-1]["recon_ev"]),
        "train_s": train_s,
    }


def summarise(rows: list[dict], key: str) -> tuple[float, float]:
    """Spearman with the truth over all sources; median relative error over sources with >= 0.1 bit."""
    truth = np.array([r["true_bits"] for r in rows])
    est = np.array([r[key] for r in rows])
    rho = float(spearmanr(truth, est).statistic)
    big = truth >= 0.1
    return rho, float(np.median(np.abs(est[big] - truth[big]) / truth[big]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="training pairs (and as many held-out pairs) per source")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    print(f"{'M':>3} {'eps':>5} {'true':>6} {'labels':>7} {'vq':>6} {'vq plug':>7} {'null':>6} {'kmeans':>7} "
          f"{'dead':>5} {'ppl':>5} {'ev':>5} {'s':>5}")
    for src in VALIDATION_SOURCES:
        r = validate_source(src, args.n, args.epochs, args.seed)
        rows.append(r)
        print(f"{r['n_symbols']:>3} {r['eps']:>5.2f} {r['true_bits']:>6.3f} {r['labels_bits']:>7.3f} {r['vq_bits']:>6.3f} "
              f"{r['vq_plugin_bits']:>7.3f} {r['vq_null_bits']:>6.3f} {r['kmeans_bits']:>7.3f} "
              f"{r['dead_code_fraction']:>5.2f} {r['code_perplexity']:>5.1f} {r['recon_ev']:>5.2f} {r['train_s']:>5.1f}",
              flush=True)
    rho_vq, err_vq = summarise(rows, "vq_bits")
    rho_km, err_km = summarise(rows, "kmeans_bits")
    dead = max(r["dead_code_fraction"] for r in rows)
    print(f"VQ:     Spearman {rho_vq:.3f}, median relative error {100 * err_vq:.1f} %, max dead-code fraction {dead:.2f}")
    print(f"k-means: Spearman {rho_km:.3f}, median relative error {100 * err_km:.1f} %")
    print(f"relative error ratio VQ / k-means: {err_vq / err_km if err_km else float('nan'):.2f}")
    report("bench_mi_validation", "vq_mi_spearman", rho_vq, {
        "n": args.n, "epochs": args.epochs, "seed": args.seed, "rows": rows,
        "vq": {"spearman": rho_vq, "median_rel_error": err_vq, "max_dead_code_fraction": dead},
        "kmeans": {"spearman": rho_km, "median_rel_error": err_km},
    })


if __name__ == "__main__":
    main()
