"""Verdicts over training replicates, checked on simulated sweeps whose between-training and
within-sampling variances are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from eval.bootstrap import resample_counts
from eval.verdict import (
    detectable_effect,
    paired_difference,
    replicate_estimate,
    replicates_needed,
)

TRUE_DIFF = 1.0


def _simulated_sweep(rng, k: int, sd_between: float, sd_sample: float, n: int, bootstrap: int):
    """One sweep of two grid points, k replicates each: per replicate, each point's metric
    is the mean of n per-image values around its trained model's true value; the same
    resamples serve both points (paired), as in a sweep."""
    counts = resample_counts(n, bootstrap, int(rng.integers(1 << 31)))
    a_values, a_boot, b_values, b_boot = [], [], [], []
    for _ in range(k):
        a_true = rng.normal(0.0, sd_between)  # training spread of each model
        b_true = TRUE_DIFF + rng.normal(0.0, sd_between)
        a = a_true + rng.normal(0.0, sd_sample, n)
        b = b_true + rng.normal(0.0, sd_sample, n) + 0.5 * (a - a_true)  # paired prompts
        for values, boot, x in ((a_values, a_boot, a), (b_values, b_boot, b)):
            values.append(x.mean())
            boot.append(counts @ x / n)
    return np.array(a_values), np.array(a_boot), np.array(b_values), np.array(b_boot)


def _shared_prompt_sweep(rng, k: int, sd_between: float, sd_prompt: float, n: int):
    """One sweep as marble samples it: every replicate of both points on the same n prompts
    with the same seeds. Each prompt has its own effect of the size step (drawn once, so its
    luck is shared by every replicate), each image its own noise (sd 1), each training its
    own offset; the population's difference is TRUE_DIFF."""
    counts = resample_counts(n, 200, int(rng.integers(1 << 31)))
    difficulty = rng.normal(0.0, 1.0, n)  # the same for both points: cancels in the pair
    step = TRUE_DIFF + rng.normal(0.0, sd_prompt, n)
    a_values, a_boot, b_values, b_boot = [], [], [], []
    for _ in range(k):
        a = rng.normal(0.0, sd_between) + difficulty + rng.normal(0.0, 1.0, n)
        b = rng.normal(0.0, sd_between) + difficulty + step + rng.normal(0.0, 1.0, n)
        for values, boot, x in ((a_values, a_boot, a), (b_values, b_boot, b)):
            values.append(x.mean())
            boot.append(counts @ x / n)
    return np.array(a_values), np.array(a_boot), np.array(b_values), np.array(b_boot)


@pytest.mark.parametrize("sd_between", [0.0, 0.2, 0.6, 2.0])
def test_the_interval_covers_the_population_when_replicates_share_their_prompts(sd_between):
    """300 sweeps of K = 3 whose prompts' luck (sd 2 per prompt, N = 50) is shared by every
    replicate, from no training spread to trainings dominating."""
    rng = np.random.default_rng(3)
    sweeps, covered = 300, 0
    for _ in range(sweeps):
        a, a_boot, b, b_boot = _shared_prompt_sweep(rng, 3, sd_between, 2.0, 50)
        est = paired_difference(a, a_boot, b, b_boot)
        covered += est.ci_low <= TRUE_DIFF <= est.ci_high
    assert covered / sweeps >= 0.90  # 95 % nominal


def test_the_replicates_spread_alone_misses_the_sampling_they_share():
    """What the shared part is added for: with no training spread, the t interval over the
    K values covers the population's difference far less often than 95 %."""
    rng = np.random.default_rng(3)
    sweeps, covered = 300, 0
    for _ in range(sweeps):
        a, _, b, _ = _shared_prompt_sweep(rng, 3, 0.0, 2.0, 50)
        half = stats.t.ppf(0.975, 2) * np.std(b - a, ddof=1) / math.sqrt(3)
        covered += abs((b - a).mean() - TRUE_DIFF) <= half
    assert covered / sweeps < 0.85


def test_the_shared_sampling_and_the_training_spread_are_recovered():
    rng = np.random.default_rng(4)
    shared, between = [], []
    for _ in range(200):
        a, a_boot, b, b_boot = _shared_prompt_sweep(rng, 6, 0.5, 2.0, 100)
        est = paired_difference(a, a_boot, b, b_boot)
        shared.append(est.var_shared)
        between.append(est.var_between)
    # the prompts' step effects: Var(mean) = 2² / 100; two trainings' offsets: 2 · 0.5²
    assert np.mean(shared) == pytest.approx(0.04, rel=0.15)
    assert np.mean(between) == pytest.approx(0.5, rel=0.2)


def _two_level_bootstrap(diffs: np.ndarray, boot: np.ndarray, rng, reps: int = 400):
    """Resample replicates, then one bootstrap replicate within each: the interval the
    module's docstring compares against."""
    k, b = boot.shape
    means = []
    for _ in range(reps):
        picks = rng.integers(k, size=k)
        within = boot[picks, rng.integers(b, size=k)] - boot[picks].mean(1) + diffs[picks]
        means.append(within.mean())
    return np.quantile(means, [0.025, 0.975])


@pytest.mark.parametrize("sd_between", [0.0, 1.0, 3.0])
def test_the_interval_covers_the_true_difference_at_its_nominal_rate(sd_between):
    """300 simulated sweeps of K = 3: sampling alone, trainings like sampling, trainings
    dominating."""
    rng = np.random.default_rng(0)
    sweeps, covered = 300, 0
    for _ in range(sweeps):
        a, a_boot, b, b_boot = _simulated_sweep(rng, 3, sd_between, 2.0, 50, 200)
        est = paired_difference(a, a_boot, b, b_boot)
        covered += est.ci_low <= TRUE_DIFF <= est.ci_high
    assert covered / sweeps >= 0.90  # 95 % nominal


def test_a_two_level_bootstrap_undercovers_when_trainings_dominate():
    """What the t interval is chosen over (eval/verdict.py's docstring)."""
    rng = np.random.default_rng(0)
    sweeps, covered = 300, 0
    for _ in range(sweeps):
        a, a_boot, b, b_boot = _simulated_sweep(rng, 3, 3.0, 2.0, 50, 200)
        low, high = _two_level_bootstrap(b - a, b_boot - a_boot, rng)
        covered += low <= TRUE_DIFF <= high
    assert covered / sweeps < 0.85


def test_the_variance_components_are_recovered():
    rng = np.random.default_rng(1)
    between, within = [], []
    for _ in range(200):
        a, a_boot, b, b_boot = _simulated_sweep(rng, 8, 1.0, 2.0, 100, 200)
        est = paired_difference(a, a_boot, b, b_boot)
        between.append(est.var_between)
        within.append(est.var_within)
    # the difference of two independent trainings: 2 σ_b² = 2; its sampling variance:
    # Var(mean(b - a)) with b's noise 1.5 × a's noise... = (0.5² + 1) σ²/n with σ = 2
    assert np.mean(between) == pytest.approx(2.0, rel=0.15)
    assert np.mean(within) == pytest.approx(1.25 * 4 / 100, rel=0.1)


def test_one_replicate_resolves_nothing_and_says_the_spread_is_unknown():
    rng = np.random.default_rng(2)
    a, a_boot, b, b_boot = _simulated_sweep(rng, 1, 0.0, 0.1, 200, 200)
    est = paired_difference(a, a_boot, b, b_boot)
    assert est.k == 1 and est.var_between is None and not est.between_known
    assert est.ci_low > 0  # sampling alone would call it
    assert not est.resolved  # but no verdict without the spread between trainings


def test_k_replicates_of_known_values_give_the_t_interval():
    values = np.array([1.0, 2.0, 6.0])  # mean 3, s² = 7
    est = replicate_estimate(values, np.tile(values[:, None], (1, 5)))
    half = stats.t.ppf(0.975, 2) * math.sqrt(7 / 3)
    assert est.mean == 3.0 and est.ci_high - 3.0 == pytest.approx(half)
    assert est.var_within == 0.0 and est.var_between == pytest.approx(7.0)
    assert est.resolved == (3.0 - half > 0)


def test_replicates_closer_than_their_sampling_allows_do_not_narrow_the_interval():
    """Three replicates 0.01 apart whose bootstraps (the same resamples; orthogonal, so
    nothing shared) say each alone varies with variance 0.12: the interval is sampling's
    t interval, t_{2,.975} sqrt(0.12 / 3), not the replicates' own 0.01 spread's."""
    values = np.array([0.30, 0.31, 0.32])
    signs = np.array([[1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=np.float64)
    est = replicate_estimate(values, values[:, None] + 0.3 * signs)
    assert est.var_within == pytest.approx(0.12) and est.var_shared == pytest.approx(0.0)
    assert est.ci_high - est.mean == pytest.approx(stats.t.ppf(0.975, 2) * math.sqrt(0.04))
    assert est.var_between == 0.0 and not est.resolved  # 0.31 ± 0.86


def test_detectable_effect_and_the_replicates_it_needs():
    # (t_{2,.975} + t_{2,.80}) sqrt((1 + 0.5 · 100/100) / 3)
    factor = stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)
    assert detectable_effect(1.0, 0.5, 3, 100, 100) == pytest.approx(factor * math.sqrt(0.5))
    # four times the samples quarter the sampling part only
    assert detectable_effect(1.0, 0.5, 3, 400, 100) == pytest.approx(
        factor * math.sqrt((1.0 + 0.125) / 3)
    )
    k = replicates_needed(1.0, 1.0, 0.5, 100, 100)
    assert detectable_effect(1.0, 0.5, k, 100, 100) <= 1.0
    assert detectable_effect(1.0, 0.5, k - 1, 100, 100) > 1.0 or k == 2
    assert replicates_needed(1e-3, 1.0, 0.5, 100, 100, k_max=50) is None
    with pytest.raises(ValueError):
        detectable_effect(1.0, 0.5, 1, 100, 100)


def test_sampling_every_replicate_shares_is_not_divided_by_k():
    # (t_{2,.975} + t_{2,.80}) sqrt((1 + (0.5 - 0.2)) / 3 + 0.2); at 4 N the sampling parts
    # fall by 4; more replicates never take the shared part below 0.2
    factor = stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)
    assert detectable_effect(1.0, 0.5, 3, 100, 100, 0.2) == pytest.approx(
        factor * math.sqrt(1.3 / 3 + 0.2)
    )
    assert detectable_effect(1.0, 0.5, 3, 400, 100, 0.2) == pytest.approx(
        factor * math.sqrt((1.0 + 0.075) / 3 + 0.05)
    )
    floor = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # k -> infinity
    assert replicates_needed(0.9 * floor * math.sqrt(0.2), 1.0, 0.5, 100, 100, 1000, 0.2) is None
    assert replicates_needed(0.9 * floor * math.sqrt(0.2), 1.0, 0.5, 400, 100, 1000, 0.2)
