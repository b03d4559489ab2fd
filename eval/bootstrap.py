"""Seeded bootstrap confidence intervals over the generated samples (Efron & Tibshirani 1993):
resample the N samples with replacement R times, recompute the statistic on each resample,
and take the α/2 and 1 - α/2 quantiles of the R values (the percentile interval).

Resampling with replacement repeats samples, and a repeated sample lowers a set's diversity:
Fréchet distances and MMD of resamples come out systematically above the estimate itself,
so its percentile interval can miss the estimate entirely. `centred_interval` removes that
shift, the bootstrap estimate of bias (mean of the replicates minus the estimate), from the
quantiles: the interval then says how far the value moves between draws of N samples, around
the value reported. For a mean the shift is zero up to resampling noise.

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


def centred_interval(
    estimate: float,
    replicates: np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> tuple[float, float]:
    """The percentile interval of the replicates shifted by the bootstrap bias estimate,
    mean(replicates) - estimate (see the module docstring), kept within the metric's
    `bounds` (the shift can carry a proportion's interval below 0)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    low, high = percentile_interval(replicates - (replicates.mean() - estimate), confidence)
    return float(np.clip(low, *bounds)), float(np.clip(high, *bounds))


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
