"""The statistics behind the error bars and the report's "is the difference real?": intervals, paired tests,
multiple-testing correction, cluster-robust errors, corpus metrics' bootstrap, and the power `mode=plan` reports.
Plain functions of numbers, knowing nothing of runs or MLflow, so each is tested on its own against outside
references (tests/test_compare.py: a published table, statsmodels, scipy, a hand-worked example, a simulation);
runner/reporting/compare.py decides which applies to which runs.

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


Clusters = list[list[object]] | None  # per group, each doc's cluster; None: every doc is its own


def _resampled_sums(rng: np.random.Generator, values: np.ndarray, resamples: int) -> np.ndarray:
    """Column sums of `values` (n units x k columns) over `resamples` resamples of its rows: (resamples, k)."""
    import numpy as np

    n = len(values)
    out = np.empty((resamples, values.shape[1]))
    step = max(1, 4_000_000 // n)  # bounds the index matrix at ~32 MB
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].sum(axis=1)
    return out


def _units(rows: np.ndarray, clusters: list[object] | None) -> np.ndarray:
    """What a bootstrap resamples: each doc's row with a count of 1 appended, or, with `clusters`, one row per
    cluster holding its docs' column sums and their count (a cluster bootstrap: clusters drawn with replacement)."""
    import numpy as np

    units = np.hstack([rows, np.ones((len(rows), 1))])
    if clusters is None:
        return units
    index = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    summed = np.zeros((len(index), units.shape[1]))
    np.add.at(summed, [index[c] for c in clusters], units)
    return summed


def bootstrap_statistic(
    groups: list[list[float]], weights: list[float], resamples: int, seed: int, clusters: Clusters = None
) -> np.ndarray:
    """`sum(w_t * mean(group_t))` over `resamples` stratified resamples: docs (or, with `clusters`, the clusters
    of each group) drawn with replacement per group; a resample's mean is its scores' sum over its doc count."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for t, (values, weight) in enumerate(zip(groups, weights, strict=True)):
        rows = np.asarray(values, dtype=float).reshape(-1, 1)
        sums = _resampled_sums(rng, _units(rows, None if clusters is None else clusters[t]), resamples)
        total += weight * sums[:, 0] / sums[:, 1]
    return total


def bootstrap_interval(
    groups: list[list[float]],
    weights: list[float],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    clusters: Clusters = None,
) -> tuple[float, float]:
    """Percentile interval (`CONFIDENCE`) of the weighted mean of group means."""
    return percentile_interval(bootstrap_statistic(groups, weights, resamples, seed, clusters))


def paired_bootstrap_p(
    differences: list[list[float]],
    weights: list[float],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    clusters: Clusters = None,
) -> float:
    """Two-sided p-value of `sum(w_t * mean(d_t)) = 0`: the resampled statistic, centred on the observed one, is
    the null distribution; p = (1 + #{|T* - T| >= |T|}) / (resamples + 1), so never below 1/(resamples + 1)."""
    observed = sum(w * math.fsum(d) / len(d) for d, w in zip(differences, weights, strict=True))
    return null_centred_p(bootstrap_statistic(differences, weights, resamples, seed, clusters), observed)


def clustered_stderr(values: list[float], clusters: list[object]) -> float:
    """Cluster-robust standard error of the mean (Miller 2024, "Adding Error Bars to Evals", appendix A): the
    squared sums of each cluster's deviations from the mean, over n squared, with the finite-cluster correction
    G / (G - 1) that Inspect's `stderr(cluster=...)` applies. One doc per cluster: the usual CLT standard error
    up to that correction. NaN with fewer than two clusters."""
    n = len(values)
    mean = math.fsum(values) / n
    deviations: dict[object, float] = {}
    for value, cluster in zip(values, clusters, strict=True):
        deviations[cluster] = deviations.get(cluster, 0.0) + value - mean
    g = len(deviations)
    if g < 2:
        return math.nan
    return math.sqrt(g / (g - 1) * math.fsum(d * d for d in deviations.values())) / n


# --------------------------------------------------------------------------------------------------- corpus metrics

# Corpus-level ("micro") metrics of per-doc (true positive, false positive, false negative) counts, as the project's
# F1-scored tasks aggregate them (adapters/tasks/text_geospatial/f1_scoring.py), with the same conventions for
# empty denominators. Their error bars resample the docs and recompute the metric from the summed counts.
MICRO = ("micro_f1", "micro_precision", "micro_recall")


def micro_statistic(metric: str) -> str | None:
    """The corpus statistic a metric of (tp, fp, fn) counts is, by its name (`f1`, `loc_f1`, `precision`, ...)."""
    base = metric.split("_stderr")[0]
    for name in MICRO:
        if base == name.removeprefix("micro_") or base.endswith("_" + name.removeprefix("micro_")):
            return name
    return None


def micro(statistic: str, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """`statistic` (one of MICRO) of summed counts, element-wise over arrays of sums."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        if statistic == "micro_f1":
            return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 1.0)
        if statistic == "micro_precision":  # no predictions at all: perfect only if there was nothing to find
            return np.where(tp + fp > 0, tp / (tp + fp), (fn == 0).astype(float))
        if statistic == "micro_recall":
            return np.where(tp + fn > 0, tp / (tp + fn), 1.0)
    raise ValueError(f"unknown corpus statistic {statistic!r}; known: {', '.join(MICRO)}")


def micro_value(statistic: str, parts: list[tuple[float, float, float]]) -> float:
    """`statistic` of one doc set's (tp, fp, fn) counts."""
    import numpy as np

    tp, fp, fn = (np.asarray([float(math.fsum(column))]) for column in zip(*parts, strict=True))
    return float(micro(statistic, tp, fp, fn)[0])


def bootstrap_micro(
    groups: list[list[tuple[float, float, float]]],
    weights: list[float],
    statistic: str,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    minus: list[list[tuple[float, float, float]]] | None = None,
    clusters: Clusters = None,
) -> np.ndarray:
    """`sum(w_t * statistic(group_t))` over `resamples` stratified resamples of the docs (or their `clusters`) per
    group, or, with `minus` (the same docs' counts in another run), of the paired difference
    `statistic(A) - statistic(B)`, both runs resampled with the same docs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for t, (parts, weight) in enumerate(zip(groups, weights, strict=True)):
        values = np.asarray(parts, dtype=float).reshape(-1, 3)
        if minus is not None:
            values = np.hstack([values, np.asarray(minus[t], dtype=float).reshape(-1, 3)])
        sums = _resampled_sums(rng, _units(values, None if clusters is None else clusters[t]), resamples)
        draw = micro(statistic, sums[:, 0], sums[:, 1], sums[:, 2])
        if minus is not None:
            draw = draw - micro(statistic, sums[:, 3], sums[:, 4], sums[:, 5])
        total += weight * draw
    return total


def percentile_interval(draws: np.ndarray) -> tuple[float, float]:
    """The `CONFIDENCE` percentile interval of bootstrap draws."""
    import numpy as np

    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def null_centred_p(draws: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p-value of `statistic = 0`: the draws centred on the observed value are the null
    distribution; p = (1 + #{|T* - T| >= |T|}) / (resamples + 1), so never below 1/(resamples + 1)."""
    extreme = int((abs(draws - observed) >= abs(observed) - 1e-9).sum())  # 1e-9: what the tables keep
    return (1 + extreme) / (len(draws) + 1)


# --------------------------------------------------------------------------------------------------- power

POWER = 0.8
ALPHA = 0.05
WORST_CASE_SD = 0.5  # the largest standard deviation a per-doc score in [0, 1] can have (half right, half wrong)


def _z_sum(alpha: float, power: float) -> float:
    from statistics import NormalDist

    unit = NormalDist()
    return unit.inv_cdf(1 - alpha / 2) + unit.inv_cdf(power)


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest difference between two models' mean scores over the same `n` docs that a two-sided paired
    test at `alpha` finds with probability `power` (normal approximation), for per-doc scores of standard
    deviation `sd` in each model, the two models' scores taken as independent: the per-doc difference then has
    standard deviation `sd * sqrt(2)`. Models that agree on many docs have a smaller one: this is an upper bound
    for them."""
    if n <= 0:
        raise ValueError("the detectable difference needs at least one doc")
    return _z_sum(alpha, power) * sd * math.sqrt(2 / n)


def samples_needed(sd: float, difference: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """The docs needed for `detectable_difference(sd, n) <= difference`."""
    if difference <= 0:
        raise ValueError("the difference to detect must be positive")
    return max(1, math.ceil(2 * (_z_sum(alpha, power) * sd / difference) ** 2 - 1e-9))  # exact: no float noise
