"""Verdicts that include the spread between trainings: the mean of a metric over K trained
replicates, a paired difference between two grid points, the variance components behind
it, and the smallest difference a sweep of K replicates and N samples can resolve.

Model: replicate r's measured value (or paired difference) is

    y_r = μ + b_r + c + e_r,   b_r ~ (0, σ²_b)  training,
                               c   ~ (0, σ²_c)  sampling shared by every replicate,
                               e_r ~ (0, σ²_e)  sampling of replicate r alone.

Every replicate is sampled on the same prompts with the same seeds, so the luck of the
prompt draw (c) is the same for all of them and their spread does not show it: the sample
variance s² of the K values estimates σ²_b + σ²_e only. Each replicate's bootstrap (the
same resamples for every replicate) gives its whole sampling variance σ²_w = σ²_c + σ²_e,
and the bootstrap of the replicates' mean gives V = σ²_c + σ²_e / K; so

    σ²_c = (K V - σ²_w) / (K - 1),   σ²_e = σ²_w - σ²_c,   σ²_b = max(s² - σ²_e, 0),
    Var(ȳ) = s² / K + σ²_c.

The interval adds the two parts' half-widths in quadrature,

    ȳ ± sqrt((t_{K-1, 1-α/2} · sqrt(max(s², σ²_e) / K))² + (z_{1-α/2} · σ_c)²):

the t interval over replicates (exact for normal y_r, whatever the split between training
and the replicates' own sampling) widened by the normal interval of the shared sampling,
known from the bootstrap's many resamples. s² is never taken below σ²_e: K values cannot
truly vary less than their own sampling makes them, so where they happen to agree more
closely (with K = 3, one sweep in 25 has a standard deviation under a fifth of it) the
interval stays as wide as sampling alone makes it. On simulated sweeps of K = 3 (1,000
each, 95 % nominal, prompts shared by the replicates or not, from no training spread to
trainings dominating) it covered the population's difference in 95-100 % of sweeps;
without the shared part the t interval covered it in 76 % where that part dominated. With
K = 1 the spread between trainings is unknown: the interval covers sampling alone and no
verdict is drawn from it.

Why not resample replicates (a two-level bootstrap)? With K = 3 there are only 10 distinct
resamples of the replicates and their spread is (K-1)/K of s², so its intervals are too
narrow once trainings differ: in the simulated sweeps of tests/eval/test_verdict.py (K = 3,
paired, 95 % nominal, 400 sweeps each) it covered the true difference in 96 % of sweeps
without training spread, 91 % with a training spread about the sampling spread, 79 % at
four times it and 76 % at thirteen times; the t interval covered it in 95-97 % of each.

A difference is **resolved** only where its interval excludes 0 and K >= 2.

The detectable effect at K replicates and N samples (80 % power, two-sided 5 %):

    δ = (t_{K-1, 0.975} + t_{K-1, 0.80}) · sqrt((σ²_b + σ²_e(N)) / K + σ²_c(N)),

the sampling parts at N from those measured at N₀ as σ²(N) = σ²(N₀) N₀ / N (a sampling
variance falls as 1/N; the training spread does not, and more replicates do not shrink the
shared part: only more prompts do).
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
    var_within: float  # σ²_w, one replicate's sampling variance at the sweep's N (mean)
    var_shared: float = 0.0  # σ²_c, the part of σ²_w every replicate shares (same prompts)

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
    resampled = bootstrap.shape[1] > 1
    within = float(np.mean(bootstrap.var(axis=1, ddof=1))) if resampled else 0.0
    mean = float(values.mean())
    if k == 1:
        alpha = 1 - confidence
        shifted = bootstrap[0] - (bootstrap[0].mean() - mean)
        low, high = np.quantile(shifted, [alpha / 2, 1 - alpha / 2])
        return Estimate(mean, float(low), float(high), 1, None, within)
    of_mean = float(bootstrap.mean(axis=0).var(ddof=1)) if resampled else 0.0
    shared = min(max((k * of_mean - within) / (k - 1), 0.0), within)
    s2 = float(values.var(ddof=1))
    q = 1 - (1 - confidence) / 2
    own = within - shared  # σ²_e, the sampling each replicate has alone
    half = math.hypot(
        _t(q, k - 1) * math.sqrt(max(s2, own) / k), float(stats.norm.ppf(q)) * math.sqrt(shared)
    )
    between = max(s2 - own, 0.0)
    return Estimate(mean, mean - half, mean + half, k, between, within, shared)


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
    var_between: float,
    var_within: float,
    k: int,
    n: int,
    n_measured: int,
    var_shared: float = 0.0,
) -> float:
    """The smallest |difference| a sweep of k replicates and n samples resolves with 80 %
    power; var_within (of which var_shared is common to all replicates) was measured at
    n_measured samples. k >= 2."""
    if k < 2:
        raise ValueError("a verdict needs k >= 2 replicates")
    scale = n_measured / n
    var = (var_between + (var_within - var_shared) * scale) / k + var_shared * scale
    factor = _t(1 - (1 - CONFIDENCE) / 2, k - 1) + _t(POWER, k - 1)
    return factor * math.sqrt(var)


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
    var_shared: float = 0.0,
) -> int | None:
    """The fewest replicates (>= 2) whose detectable effect at n samples is at most
    `effect`; None when even k_max would not (the spread between trainings, or the sampling
    all replicates share, is too large for the effect at this n)."""
    if effect <= 0:
        raise ValueError(f"the target effect must be > 0, got {effect}")
    for k in range(2, k_max + 1):
        if detectable_effect(var_between, var_within, k, n, n_measured, var_shared) <= effect:
            return k
    return None
