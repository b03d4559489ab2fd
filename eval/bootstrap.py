"""Seeded bootstrap confidence intervals over the generated samples (Efron & Tibshirani 1993,
percentile interval): resample the N samples with replacement R times, recompute the
statistic on each resample, and take the α/2 and 1 - α/2 quantiles of the R values.

Resamples are drawn as counts (how often each sample appears), so a statistic can weight
rows instead of copying them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def resample_counts(n: int, replicates: int, seed: int) -> np.ndarray:
    """(R, n) int counts of a multinomial resample of n items, one row per replicate."""
    if n < 1 or replicates < 1:
        raise ValueError(f"need n >= 1 and replicates >= 1, got {n} and {replicates}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates)


def percentile_interval(estimates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(np.asarray(estimates, dtype=np.float64), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    replicates: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Interval of `statistic(counts)`, where counts (n,) weights each sample."""
    counts = resample_counts(n, replicates, seed)
    return percentile_interval(np.array([statistic(c) for c in counts]), confidence)


def mean_interval(
    values: np.ndarray, replicates: int, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval of the mean of per-sample values (N,), e.g. CLIP scores or 0/1 matches."""
    values = np.asarray(values, dtype=np.float64)
    counts = resample_counts(len(values), replicates, seed)
    return percentile_interval(counts @ values / len(values), confidence)
