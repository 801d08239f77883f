"""The statistics behind the report's "is the difference real?": intervals, paired tests, multiple-testing
correction. Plain functions of numbers, knowing nothing of runs or MLflow, so each is tested on its own against
known values (tests/test_compare.py); runner/reporting/compare.py decides which applies to which runs.

numpy and scipy are imported inside the functions that need them: importing runner.reporting.report stays light.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
_Z = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = _Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; Newcombe 1998, method 3)."""
    if n <= 0:
        raise ValueError("the Wilson interval needs at least one trial")
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant docs (right in one run only) as Binomial(n, 1/2)."""
    from scipy.stats import binom

    n = a_only + b_only
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * float(binom.cdf(min(a_only, b_only), n, 0.5)))


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order (step-down, kept monotone, capped at 1)."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _resampled_means(rng: np.random.Generator, values: np.ndarray, resamples: int) -> np.ndarray:
    import numpy as np

    n = len(values)
    out = np.empty(resamples)
    step = max(1, 4_000_000 // n)  # bounds the index matrix at ~32 MB
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def bootstrap_statistic(groups: list[list[float]], weights: list[float], resamples: int, seed: int) -> np.ndarray:
    """`sum(w_t * mean(group_t))` over `resamples` stratified resamples (docs drawn with replacement per group)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for values, weight in zip(groups, weights, strict=True):
        total += weight * _resampled_means(rng, np.asarray(values, dtype=float), resamples)
    return total


def bootstrap_interval(
    groups: list[list[float]], weights: list[float], resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile interval (`CONFIDENCE`) of the weighted mean of group means."""
    import numpy as np

    draws = bootstrap_statistic(groups, weights, resamples, seed)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def paired_bootstrap_p(
    differences: list[list[float]], weights: list[float], resamples: int = RESAMPLES, seed: int = SEED
) -> float:
    """Two-sided p-value of `sum(w_t * mean(d_t)) = 0`: the resampled statistic, centred on the observed one, is
    the null distribution; p = (1 + #{|T* - T| >= |T|}) / (resamples + 1), so never below 1/(resamples + 1)."""
    observed = sum(w * math.fsum(d) / len(d) for d, w in zip(differences, weights, strict=True))
    draws = bootstrap_statistic(differences, weights, resamples, seed)
    extreme = int((abs(draws - observed) >= abs(observed) - 1e-9).sum())  # 1e-9: what the tables keep
    return (1 + extreme) / (resamples + 1)
