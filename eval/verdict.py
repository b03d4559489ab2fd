"""Verdicts that include the spread between trainings: the mean of a metric over K trained
replicates, a paired difference between two grid points, the variance components behind
it, and the smallest difference a sweep of K replicates and N samples can resolve.

Model (one-way random effects): replicate r's measured value (or paired difference) is

    y_r = μ + b_r + w_r,   b_r ~ (0, σ²_b)  training,   w_r ~ (0, σ²_w)  sampling at N,

with σ²_w read off each replicate's bootstrap replicates (the sampling variance of that
replicate's estimate). The sample variance s² of the K values estimates σ²_b + σ²_w, so

    interval = ȳ ± t_{K-1, 1-α/2} · s / √K

covers μ at the nominal rate when the y_r are normal, whatever the split between the two
components; σ²_b is estimated as max(s² - mean σ²_w, 0) (the ANOVA estimate). With K = 1
there is no s²: the spread between trainings is unknown, the interval covers sampling
alone, and no verdict is drawn from it.

Why not resample replicates (a two-level bootstrap)? With K = 3 there are only 10 distinct
resamples of the replicates and their spread is (K-1)/K of s², so its intervals are too
narrow once trainings differ: in the simulated sweeps of tests/eval/test_verdict.py (K = 3,
paired, 95 % nominal, 400 sweeps each) it covered the true difference in 96 % of sweeps
without training spread, 91 % with a training spread about the sampling spread, 79 % at
four times it and 76 % at thirteen times; the t interval covered it in 95-97 % of each.

A difference is **resolved** only where its interval excludes 0 and K >= 2.

The detectable effect at K replicates and N samples (80 % power, two-sided 5 %):

    δ = (t_{K-1, 0.975} + t_{K-1, 0.80}) · sqrt((σ²_b + σ²_w(N)) / K),   σ²_w(N) = σ²_w(N₀) N₀ / N

(a sampling variance falls as 1/N; the training spread does not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
POWER = 0.80


@dataclass(frozen=True)
class Estimate:
    """The mean over replicates of one quantity, with its interval and variance components."""

    mean: float
    ci_low: float
    ci_high: float
    k: int  # replicates
    var_between: float | None  # σ²_b, training; None when K = 1 (unknown)
    var_within: float  # σ²_w, sampling, at the sweep's N (mean over replicates)

    @property
    def between_known(self) -> bool:
        return self.var_between is not None

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 and includes the spread between trainings."""
        return self.between_known and (self.ci_low > 0 or self.ci_high < 0)


def _t(q: float, df: int) -> float:
    return float(stats.t.ppf(q, df))


def replicate_estimate(
    values: np.ndarray, bootstrap: np.ndarray, confidence: float = CONFIDENCE
) -> Estimate:
    """Mean over K replicates of a quantity measured once per replicate.

    values: (K,) the estimate of each replicate; bootstrap: (K, B) each replicate's
    bootstrap replicates (for a paired difference, the differences of replicates drawn with
    the same resamples). K = 1: the interval is the centred bootstrap percentile interval
    (sampling alone) and the spread between trainings is unknown."""
    values = np.asarray(values, dtype=np.float64)
    bootstrap = np.asarray(bootstrap, dtype=np.float64)
    if values.ndim != 1 or len(values) < 1 or bootstrap.shape[0] != len(values):
        raise ValueError(f"need (K,) values and (K, B) bootstrap rows, got {values.shape}, "
                         f"{bootstrap.shape}")  # fmt: skip
    k = len(values)
    within = float(np.mean(bootstrap.var(axis=1, ddof=1))) if bootstrap.shape[1] > 1 else 0.0
    mean = float(values.mean())
    if k == 1:
        alpha = 1 - confidence
        shifted = bootstrap[0] - (bootstrap[0].mean() - mean)
        low, high = np.quantile(shifted, [alpha / 2, 1 - alpha / 2])
        return Estimate(mean, float(low), float(high), 1, None, within)
    s2 = float(values.var(ddof=1))
    half = _t(1 - (1 - confidence) / 2, k - 1) * math.sqrt(s2 / k)
    return Estimate(mean, mean - half, mean + half, k, max(s2 - within, 0.0), within)


def paired_difference(
    a_values: np.ndarray, a_bootstrap: np.ndarray, b_values: np.ndarray, b_bootstrap: np.ndarray
) -> Estimate:
    """b - a, replicate by replicate (replicate r of A against replicate r of B) and
    resample by resample (the same prompts, seeds and resamples): (K,) values and (K, B)
    bootstrap replicates of each side."""
    return replicate_estimate(
        np.asarray(b_values) - np.asarray(a_values),
        np.asarray(b_bootstrap, dtype=np.float64) - np.asarray(a_bootstrap, dtype=np.float64),
    )


# ---------------------------------------------------------------------------- sizing a sweep


def detectable_effect(
    var_between: float, var_within: float, k: int, n: int, n_measured: int
) -> float:
    """The smallest |difference| a sweep of k replicates and n samples resolves with 80 %
    power; var_within was measured at n_measured samples. k >= 2."""
    if k < 2:
        raise ValueError("a verdict needs k >= 2 replicates")
    var = var_between + var_within * n_measured / n
    factor = _t(1 - (1 - CONFIDENCE) / 2, k - 1) + _t(POWER, k - 1)
    return factor * math.sqrt(var / k)


def sampling_detectable_effect(var_within: float) -> float:
    """With one training per grid point: the smallest |difference| sampling alone lets a
    sweep detect (80 % power, two-sided 5 %, the normal quantiles); trainings add their own
    spread, unknown here, so the true detectable effect is larger."""
    z = stats.norm.ppf(1 - (1 - CONFIDENCE) / 2) + stats.norm.ppf(POWER)
    return float(z * math.sqrt(var_within))


def replicates_needed(
    effect: float,
    var_between: float,
    var_within: float,
    n: int,
    n_measured: int,
    k_max: int = 1000,
) -> int | None:
    """The fewest replicates (>= 2) whose detectable effect at n samples is at most
    `effect`; None when even k_max would not (the spread between trainings alone is
    larger than the effect allows)."""
    if effect <= 0:
        raise ValueError(f"the target effect must be > 0, got {effect}")
    for k in range(2, k_max + 1):
        if detectable_effect(var_between, var_within, k, n, n_measured) <= effect:
            return k
    return None
