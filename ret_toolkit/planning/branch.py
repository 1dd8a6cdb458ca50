"""Branch awareness as a paired test: does the prefix carry more about the correct path the
model did not take than about a decoy path of the same shape?

For N answers: the prefix code c_i, the (bucketed) first hop u_i of the unused
correct path and d_i of the decoy. u and d have the same support, so their MIs
with c have the same estimator floor; the question is the *difference*

    D = [I(c; u) - floor_u] - [I(c; d) - floor_d]

where each floor is the MI's permutation-null mean (its drift for independent
data of this size and alphabet). Under "the prefix does not tell unused from
decoy" the pair (u_i, d_i) is exchangeable, so swapping u_i and d_i with
probability 1/2 per answer draws from the null of D: a paired permutation test
whose p-value is one-sided (H1: D > 0). The CI of D resamples answers (the
bootstrap spread, centred on the estimate). A ratio of the two drift-corrected
MIs is given only when both clear their own null; a ratio of two MIs that
are each indistinguishable from 0 is noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ret_toolkit.info import permutation_test
from ret_toolkit.info.estimators import mi_terms, prepare_codes
from ret_toolkit.info.resampling import bootstrap_interval

__all__ = ["BranchAwareness", "branch_awareness"]


@dataclass(frozen=True)
class BranchAwareness:
    """The paired branch-awareness statistic (module docstring). MIs in bits.

    mi_*: Miller–Madow MI of the prefix code with the unused path / the decoy;
    null_*: its permutation-null mean (the floor); p_*: its permutation p-value.
    difference: D, drift-corrected; ci_low/ci_high its bootstrap CI;
    p_value: the paired permutation p-value of D > 0.
    ratio: (mi_unused - null_unused) / (mi_decoy - null_decoy) when both p_* < alpha, else None.
    """

    n: int
    mi_unused: float
    null_unused: float
    p_unused: float
    mi_decoy: float
    null_decoy: float
    p_decoy: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    ratio: float | None
    alpha: float = 0.05

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def significant(self) -> bool:
        """The CI of D excludes 0 and the paired test rejects at ``alpha``."""
        return self.ci_low > 0 and self.p_value < self.alpha

    def table(self) -> str:
        ratio = "n/a (an MI does not clear its null)" if self.ratio is None else f"{self.ratio:.2f}"
        lines = [
            f"branch awareness over {self.n} answers (MI in bits, Miller–Madow; floor = permutation-null mean)",
            f"  MI(prefix; unused path) {self.mi_unused:.4f}  floor {self.null_unused:.4f}  p {self.p_unused:.3g}",
            f"  MI(prefix; decoy)       {self.mi_decoy:.4f}  floor {self.null_decoy:.4f}  p {self.p_decoy:.3g}",
            f"  difference {self.difference:+.4f} [{self.ci_low:+.4f}, {self.ci_high:+.4f}]  "
            f"paired p {self.p_value:.3g}  ratio {ratio}",
        ]
        return "\n".join(lines)


def _mi(c: tuple[np.ndarray, int], y: tuple[np.ndarray, int], idx: np.ndarray | None = None) -> float:
    if idx is not None:
        c, y = (c[0][idx], c[1]), (y[0][idx], y[1])
    hx, hy, hxy = mi_terms(c, y, "miller_madow")
    return hx + hy - hxy


def branch_awareness(prefix_codes, unused_codes, decoy_codes, *, n_permutations: int = 1000, n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0) -> BranchAwareness:
    """The paired test of MI(prefix; unused) − MI(prefix; decoy) (module docstring).

    Args:
        prefix_codes: (N,) integer codes of the prefix block, one per answer.
        unused_codes, decoy_codes: (N,) integer codes of the unused correct path and
            of the decoy, on the same support (e.g. the first hop bucketed by node index).
        n_permutations: draws of each MI's null and of the paired-swap null.
        n_boot: bootstrap resamples of the answers for the CI of the difference.
    """
    if n_permutations < 1 or n_boot < 2:
        raise ValueError(f"n_permutations must be >= 1 and n_boot >= 2, got {n_permutations} and {n_boot}")
    c = np.asarray(prefix_codes)
    u, d = np.asarray(unused_codes), np.asarray(decoy_codes)
    cc, _, _ = prepare_codes("miller_madow", prefix=c, unused=u, decoy=d)  # validates all three
    # u and d on one alphabet, so that a swap keeps both codes meaningful
    both = prepare_codes("miller_madow", paths=np.concatenate([u, d]))[0]
    n = cc[0].size
    cu, cd = (both[0][:n], both[1]), (both[0][n:], both[1])
    pu = permutation_test(c, u, n_permutations=n_permutations, estimator="miller_madow", seed=seed)
    pd = permutation_test(c, d, n_permutations=n_permutations, estimator="miller_madow", seed=seed + 1)
    floor = pu["null_mean"] - pd["null_mean"]
    raw = _mi(cc, cu) - _mi(cc, cd)
    rng = np.random.default_rng(seed + 2)
    swapped = np.empty(n_permutations)
    for i in range(n_permutations):
        flip = rng.random(n) < 0.5
        su, sd = np.where(flip, cd[0], cu[0]), np.where(flip, cu[0], cd[0])
        swapped[i] = _mi(cc, (su, cu[1])) - _mi(cc, (sd, cd[1]))
    p_value = (1 + int(np.sum(swapped >= raw - 1e-12))) / (1 + n_permutations)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        boot[i] = _mi(cc, cu, idx) - _mi(cc, cd, idx)
    lo, hi = bootstrap_interval(boot, raw, alpha, "centered")
    eff_u, eff_d = pu["value"] - pu["null_mean"], pd["value"] - pd["null_mean"]
    ratio = eff_u / eff_d if pu["p_value"] < alpha and pd["p_value"] < alpha and eff_d > 0 else None
    return BranchAwareness(
        n=int(n), mi_unused=pu["value"], null_unused=pu["null_mean"], p_unused=pu["p_value"],
        mi_decoy=pd["value"], null_decoy=pd["null_mean"], p_decoy=pd["p_value"],
        difference=float(raw - floor), ci_low=float(lo - floor), ci_high=float(hi - floor),
        p_value=float(p_value), ratio=None if ratio is None else float(ratio), alpha=alpha,
    )
