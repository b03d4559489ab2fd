"""Keep thresholds: Otsu's cut and the two-Gaussian mixture cut, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.filter.keep_rules import (
    KEEP_RULES,
    equal_posterior_point,
    fit_two_gaussians,
    mixture_threshold,
    otsu_threshold,
)


def test_otsu_splits_two_clusters():
    values = np.r_[np.full(30, 0.1), np.full(70, 0.5)]
    t = otsu_threshold(values)
    assert 0.1 < t <= 0.5
    assert ((values >= t) == (values == 0.5)).all()
    with pytest.raises(ValueError):
        otsu_threshold(np.ones(5))


def test_equal_posterior_point_equal_spread_is_the_midpoint():
    assert equal_posterior_point((0.5, 0.5), (0.0, 4.0), (1.0, 1.0)) == pytest.approx(2.0)


def test_equal_posterior_point_moves_away_from_the_heavier_component():
    # equal spreads s: x = (m0 + m1) / 2 + s² ln(w0 / w1) / (m1 - m0)
    w0, w1, m0, m1, s = 0.8, 0.2, 0.0, 4.0, 1.5
    expected = (m0 + m1) / 2 + s**2 * math.log(w0 / w1) / (m1 - m0)
    assert equal_posterior_point((w0, w1), (m0, m1), (s, s)) == pytest.approx(expected)


def test_equal_posterior_point_unequal_spreads_solves_the_quadratic():
    w, m, s = (0.2, 0.8), (0.0, 0.93), (0.38, 0.03)  # the built-in data's measured shape
    x = equal_posterior_point(w, m, s)

    def log_density(k):
        return math.log(w[k] / s[k]) - (x - m[k]) ** 2 / (2 * s[k] ** 2)

    assert m[0] < x < m[1]
    assert log_density(0) == pytest.approx(log_density(1), abs=1e-9)


def test_fit_two_gaussians_recovers_the_mixture():
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(0.0, 0.35, 20_000), rng.normal(0.9, 0.03, 80_000)]
    weights, means, stds = fit_two_gaussians(values)
    np.testing.assert_allclose(weights, [0.2, 0.8], atol=0.01)
    np.testing.assert_allclose(means, [0.0, 0.9], atol=0.01)
    np.testing.assert_allclose(stds, [0.35, 0.03], rtol=0.03)


def test_mixture_threshold_keeps_the_tight_upper_mode_and_drops_the_broad_tail():
    rng = np.random.default_rng(1)
    right = rng.normal(0.9, 0.03, 4000)
    wrong = rng.normal(0.0, 0.35, 1000)
    t = mixture_threshold(np.r_[wrong, right])
    otsu = otsu_threshold(np.r_[wrong, right])
    assert (right >= t).mean() > 0.99
    # Otsu cuts midway and keeps the wrong mode's upper tail; the mixture cut does not
    assert (wrong < t).mean() > 0.98 > (wrong < otsu).mean()


def test_keep_rules_by_name():
    from types import SimpleNamespace

    values = np.linspace(0.0, 1.0, 101)
    settings = SimpleNamespace(threshold=0.28, top_fraction=0.3)
    assert KEEP_RULES["threshold"](values, settings) == 0.28
    assert KEEP_RULES["top_fraction"](values, settings) == pytest.approx(0.7)
    assert KEEP_RULES["otsu"](values, settings) == otsu_threshold(values)
    two_modes = np.r_[np.linspace(0.1, 0.3, 50), np.linspace(0.6, 0.8, 50)]
    assert KEEP_RULES["mixture"](two_modes, settings) == mixture_threshold(two_modes)
