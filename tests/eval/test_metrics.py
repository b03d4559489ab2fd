"""Metric maths against closed forms: CMMD, CLIP score and bootstrap intervals (the Fréchet
distance: test_frechet.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.bootstrap import (
    bootstrap_interval,
    centred_interval,
    mean_interval,
    percentile_interval,
    resample_counts,
)
from eval.clip_score import clip_scores
from eval.cmmd import cmmd, mmd2_unbiased, mmd2_unbiased_resampled
from eval.frechet import FrechetToReference

# ---------------------------------------------------------------------------- CMMD


def test_mmd_of_a_set_with_itself_is_near_zero():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 3))
    y = rng.normal(size=(400, 3))
    assert abs(mmd2_unbiased(x, y, 1.0)) < 0.01  # same distribution: unbiased, mean zero
    assert abs(cmmd(x, x)) < 1000 * 2 / 399  # the same set twice: O(1/m), not exactly 0


def test_mmd_of_shifted_gaussians_matches_the_analytic_value():
    # x ~ N(0, s² I), y ~ N(Δ, s² I) in d dimensions, RBF bandwidth σ:
    # E k(x, x') = c, E k(x, y) = c exp(-|Δ|² / (2 (σ² + 2 s²))), c = (σ² / (σ² + 2 s²))^(d/2)
    # so MMD² = 2 c (1 - exp(-|Δ|² / (2 (σ² + 2 s²)))).
    d, s, sigma = 2, 1.0, 1.5
    delta = np.array([2.0, 1.0])
    c = (sigma**2 / (sigma**2 + 2 * s**2)) ** (d / 2)
    analytic = 2 * c * (1 - np.exp(-(delta @ delta) / (2 * (sigma**2 + 2 * s**2))))  # 0.47
    estimates = []
    for seed in range(4):  # each estimate has a standard deviation of about 0.01 here
        rng = np.random.default_rng(seed)
        x = rng.normal(scale=s, size=(3000, d))
        y = rng.normal(scale=s, size=(3000, d)) + delta
        estimates.append(mmd2_unbiased(x, y, sigma))
    assert np.mean(estimates) == pytest.approx(analytic, rel=0.04)


def test_mmd_needs_two_samples_a_side():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd2_unbiased(np.zeros((1, 2)), np.zeros((5, 2)), 1.0)


# ---------------------------------------------------------------------------- CLIP score


def test_clip_score_formula():
    image = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    text = np.array([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.5, 0.5 * math.sqrt(3)]])
    # identical direction 100; orthogonal 0; opposite clipped to 0; 60 degrees: 100 cos = 50
    np.testing.assert_allclose(clip_scores(image, text), [100.0, 0.0, 0.0, 50.0], atol=1e-9)


# ---------------------------------------------------------------------------- bootstrap


def test_resample_counts_are_seeded_multinomials():
    counts = resample_counts(10, 4, seed=7)
    assert counts.shape == (4, 10) and (counts.sum(1) == 10).all()
    assert (counts == resample_counts(10, 4, seed=7)).all()
    assert not (counts == resample_counts(10, 4, seed=8)).all()


@pytest.mark.parametrize("interval", ["percentile", "centred"])
def test_mean_intervals_cover_the_truth_at_about_their_nominal_rate(interval):
    """200 synthetic data sets of 100 draws from N(0, 1): the 95 % interval of the mean
    should contain 0 about 95 % of the time (the percentile bootstrap runs slightly under)."""
    rng = np.random.default_rng(6)
    hits = 0
    for trial in range(200):
        values = rng.normal(size=100)
        if interval == "percentile":
            low, high = mean_interval(values, replicates=400, seed=trial)
        else:
            counts = resample_counts(100, 400, seed=trial)
            low, high = centred_interval(values.mean(), counts @ values / 100)
        hits += low <= 0.0 <= high
    assert 0.89 <= hits / 200 <= 0.99


def test_centred_interval_holds_a_distance_that_resampling_inflates():
    # Resampled sets repeat rows, which inflates their Fréchet distance to a reference: the
    # plain percentile interval lies above the estimate, the centred one around it.
    rng = np.random.default_rng(8)
    reference = rng.normal(size=(3000, 32))
    x = rng.normal(size=(40, 32)) + 0.1  # fewer samples than dimensions, as FID at small N
    to_ref = FrechetToReference(reference.mean(0), np.cov(reference, rowvar=False))
    estimate = to_ref(x)
    replicates = np.array([to_ref(x, c) for c in resample_counts(40, 300, seed=0)])
    low, high = percentile_interval(replicates)
    assert estimate < low  # the bias the centring removes
    low, high = centred_interval(estimate, replicates)
    assert low < estimate < high and high - low == pytest.approx(
        np.ptp(np.quantile(replicates, [0.025, 0.975]))
    )


def test_bootstrap_interval_of_a_weighted_statistic():
    values = np.arange(10.0)
    low, high = bootstrap_interval(lambda c: float(c @ values / c.sum()), 10, 300, seed=0)
    assert low < 4.5 < high and 1.0 < high - low < 6.0


def test_resampled_mmd_equals_mmd_of_the_repeated_rows():
    from eval.cmmd import mmd2_unbiased_resampled

    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(25, 3)) + 0.3
    counts = resample_counts(30, 3, seed=1)
    got = mmd2_unbiased_resampled(x, y, 1.5, counts, block=7)
    want = [mmd2_unbiased(np.repeat(x, c, axis=0), y, 1.5) for c in counts]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    ones = np.ones((1, 30), dtype=int)  # the identity resample is the plain estimate
    assert mmd2_unbiased_resampled(x, y, 1.5, ones)[0] == pytest.approx(mmd2_unbiased(x, y, 1.5))


def test_centred_interval_stays_within_the_metrics_range():
    # estimate 0.01, replicates centred on 0.03: the shift by -0.02 takes the low end to -0.02
    replicates = np.array([0.0, 0.03, 0.03, 0.03, 0.06])
    assert centred_interval(0.01, replicates, confidence=1.0) == pytest.approx((-0.02, 0.04))
    low, high = centred_interval(0.01, replicates, confidence=1.0, bounds=(0.0, 1.0))
    assert low == 0.0 and high == pytest.approx(0.04)


# ---------------------------------------------------------------------------- CMMD on paired sets


def _paired_sets(rng, n: int, d: int = 16):
    """Two sets drawn from one distribution, paired: item i of each shares a prompt (a
    component drawn once), as a sample shares its reference image's caption."""
    prompt = rng.normal(size=(n, d))

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return unit(prompt + rng.normal(size=(n, d))), unit(prompt + rng.normal(size=(n, d)))


def test_cmmd_of_paired_sets_from_one_distribution_averages_zero():
    n, draws = 100, 200
    groups = np.arange(n)
    grouped, plain, below = [], [], 0
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        x, y = _paired_sets(rng, n)
        value = cmmd(x, y, x_groups=groups, y_groups=groups)
        grouped.append(value)
        plain.append(cmmd(x, y))
        counts = resample_counts(n, 50, seed)
        reps = 1000 * mmd2_unbiased_resampled(x, y, 10.0, counts, x_groups=groups, y_groups=groups)
        below += centred_interval(value, reps)[1] < 0
    se = np.std(grouped) / np.sqrt(draws)
    assert abs(np.mean(grouped)) < 3 * se  # unbiased for the sets it is given
    assert below / draws <= 0.025
    assert np.mean(plain) < -5 * np.std(plain) / np.sqrt(draws)  # Eq. 3 on paired sets: < 0


def _mmd2_kept_pairs(x, gx, y, gy, sigma):
    """MMD² as the mean of k over every kept pair, written out pair by pair."""

    def k(a, b):
        return np.exp(-((a - b) ** 2).sum() / (2 * sigma**2))

    def mean(a, ga, b, gb, same_set):
        vals = [
            k(a[i], b[j])
            for i in range(len(a))
            for j in range(len(b))
            if not (same_set and i == j) and ga[i] != gb[j]
        ]
        return np.mean(vals)

    return mean(x, gx, x, gx, True) + mean(y, gy, y, gy, True) - 2 * mean(x, gx, y, gy, False)


def test_grouped_resampled_mmd_leaves_out_every_pair_that_shares_a_group():
    from eval.cmmd import mmd2_unbiased_resampled

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(9, 3)) + 0.4
    gx = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 8])  # repeats: several samples a prompt
    gy = np.array([0, 1, 2, 3, 4, 5, 6, 9, 10])  # two references of prompts no sample has
    counts = resample_counts(12, 4, seed=2)
    got = mmd2_unbiased_resampled(x, y, 1.3, counts, block=5, x_groups=gx, y_groups=gy)
    want = [_mmd2_kept_pairs(np.repeat(x, c, axis=0), np.repeat(gx, c), y, gy, 1.3) for c in counts]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    ones = np.ones((1, 12), dtype=int)
    assert mmd2_unbiased_resampled(x, y, 1.3, ones, x_groups=gx, y_groups=gy)[0] == (
        pytest.approx(_mmd2_kept_pairs(x, gx, y, gy, 1.3))
    )


def test_groups_that_leave_no_pair_are_refused():
    from eval.cmmd import mmd2_unbiased

    x, y = np.zeros((3, 2)), np.ones((3, 2))
    with pytest.raises(ValueError, match="every pair shares a group"):
        mmd2_unbiased(x, y, 1.0, np.zeros(3, int), np.zeros(3, int))
    with pytest.raises(ValueError, match="both sets or for neither"):
        mmd2_unbiased(x, y, 1.0, np.arange(3), None)
