"""Known answers for the paired power calculation (ret_toolkit.info.power)."""

import numpy as np
import pytest

from ret_toolkit.info import paired_power, paired_sample_size, simulated_power


def test_textbook_sample_size_and_power():
    # (1.95996 + 0.84162)^2 = 7.849: an effect of half a standard deviation needs 32 pairs
    assert paired_sample_size(sd=1.0, delta=0.5) == 32
    assert paired_sample_size(sd=0.3, delta=0.05) == 283
    assert paired_power(1.0, 0.5, 32) == pytest.approx(0.807, abs=0.002)
    assert paired_power(1.0, 0.5, 31) < 0.8 <= paired_power(1.0, 0.5, 32)
    assert paired_power(1.0, -0.5, 32) == paired_power(1.0, 0.5, 32)  # the sign does not matter
    with pytest.raises(ValueError, match="delta"):
        paired_sample_size(1.0, 0.0)
    with pytest.raises(ValueError, match="sd"):
        paired_power(0.0, 0.1, 10)
    with pytest.raises(ValueError, match="alpha"):
        paired_power(1.0, 0.1, 10, alpha=1.5)
    with pytest.raises(ValueError, match="power"):
        paired_sample_size(1.0, 0.1, power=1.0)


def test_the_bootstrap_ci_excludes_zero_at_the_planned_rate_and_at_alpha_under_the_null():
    rng = np.random.default_rng(0)
    observed = rng.normal(0.0, 0.3, 500)  # per-prompt differences of spread 0.3
    n = paired_sample_size(0.3, 0.05)
    assert simulated_power(observed, 0.05, n, n_sim=300, n_boot=300) == pytest.approx(0.8, abs=0.07)
    assert simulated_power(observed, 0.0, n, n_sim=300, n_boot=300) <= 0.1  # the null: about alpha = 0.05
