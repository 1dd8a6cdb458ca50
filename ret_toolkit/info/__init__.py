"""Information estimators on discrete codes, in bits: entropy, MI, conditional and normalised MI,
with plug-in / Miller-Madow / jackknife estimators, permutation nulls (stratified for CMI) and bootstrap CIs (docs/architecture.md §3.3);
paired bootstrap differences over units, and how many units an evaluation needs (power of a paired mean)."""

from ret_toolkit.info.estimators import (
    ESTIMATORS,
    conditional_mutual_information,
    entropy,
    entropy_from_counts,
    mutual_information,
    normalized_mutual_information,
)
from ret_toolkit.info.power import paired_power, paired_sample_size, simulated_power
from ret_toolkit.info.resampling import (
    bootstrap_ci,
    bootstrap_mean_ci,
    conditional_bootstrap_ci,
    conditional_permutation_test,
    paired_bootstrap_ratio,
    permutation_test,
)

__all__ = [
    "ESTIMATORS",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "conditional_bootstrap_ci",
    "conditional_mutual_information",
    "conditional_permutation_test",
    "entropy",
    "entropy_from_counts",
    "mutual_information",
    "normalized_mutual_information",
    "paired_bootstrap_ratio",
    "paired_power",
    "paired_sample_size",
    "permutation_test",
    "simulated_power",
]
