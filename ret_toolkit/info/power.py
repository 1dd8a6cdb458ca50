"""How many paired units an evaluation needs to see an effect: the normal-approximation power of a paired mean.

For a difference ``d_i`` per unit (a prompt: its share of target-group tokens steered minus
unsteered; a conversation: RET's forecast error minus a baseline's) with standard deviation
``sd``, a two-sided test at level ``alpha`` of the mean over ``n`` units detects a true mean
``delta`` with power ``Phi(sqrt(n) |delta| / sd - z_{1 - alpha/2})`` (the far tail ignored);
:func:`paired_sample_size` inverts it. A bootstrap CI over the units excludes 0 at about the
same rate, which :func:`simulated_power` checks by drawing units from observed differences.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = ["paired_power", "paired_sample_size", "simulated_power"]

_Z = NormalDist()


def _check(sd: float, delta: float, alpha: float) -> None:
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd}")
    if delta == 0:
        raise ValueError("delta must be non-zero: the effect to detect")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def paired_power(sd: float, delta: float, n: int, alpha: float = 0.05) -> float:
    """Power (in [0, 1]) of a two-sided level-``alpha`` test of a paired mean over ``n`` units to detect ``delta``."""
    _check(sd, delta, alpha)
    return _Z.cdf(math.sqrt(n) * abs(delta) / sd - _Z.inv_cdf(1 - alpha / 2))


def paired_sample_size(sd: float, delta: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """The fewest units for which :func:`paired_power` reaches ``power``: ``ceil(((z_{1-a/2} + z_power) sd / delta)^2)``."""
    _check(sd, delta, alpha)
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    return max(2, math.ceil(((_Z.inv_cdf(1 - alpha / 2) + _Z.inv_cdf(power)) * sd / abs(delta)) ** 2))


def simulated_power(differences: np.ndarray, delta: float, n: int, alpha: float = 0.05, n_sim: int = 400,
                    n_boot: int = 400, seed: int = 0) -> float:
    """Share of simulated evaluations of ``n`` units whose percentile bootstrap CI of the mean excludes 0.

    Each simulation draws ``n`` units from ``differences`` (observed per-unit differences),
    recentred to mean ``delta``: the spread is the observed one, the effect the one to detect.
    """
    d = np.asarray(differences, float)
    d = d - d.mean() + delta
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_sim):
        sample = rng.choice(d, n)
        boot = sample[rng.integers(0, n, (n_boot, n))].mean(axis=1)
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        hits += bool(lo > 0 or hi < 0)
    return hits / n_sim
