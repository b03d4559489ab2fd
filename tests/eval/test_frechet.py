"""The Fréchet distance against closed forms, against pytorch-fid's `calculate_frechet_distance`
(the oracle wherever its `sqrtm` is well conditioned) and, where the covariance product is
singular, against the exact value from the feature matrices: tr((Σ1 Σ2)^½) = ||Y1 Y2ᵀ||_*
with Σi = YiᵀYi (the centred rows scaled by 1/sqrt(n - 1)). Also the streaming statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

from eval.frechet import FrechetToReference, GaussianStats, frechet_distance

D = 2048  # the FID Inception's pool3


def _random_stats(rng, dim, n):
    x = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) / math.sqrt(dim)
    return x.mean(0), np.cov(x, rowvar=False)


# ---------------------------------------------------------------------------- Fréchet distance


def test_equal_covariances_give_the_squared_mean_gap():
    cov = np.eye(8)
    assert frechet_distance(np.zeros(8), cov, np.ones(8), cov) == pytest.approx(8.0)


def test_one_dimensional_gaussians():
    # FD(N(m1, s1²), N(m2, s2²)) = (m1 - m2)² + (s1 - s2)²
    assert frechet_distance([0.5], [[4.0]], [2.0], [[0.25]]) == pytest.approx(1.5**2 + 1.5**2)


def test_identical_sets_give_zero_and_the_distance_is_symmetric():
    rng = np.random.default_rng(0)
    mu1, s1 = _random_stats(rng, 16, 200)
    mu2, s2 = _random_stats(rng, 16, 300)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1))


def test_equals_pytorch_fid_in_few_dimensions():
    rng = np.random.default_rng(16)
    mu1, s1 = _random_stats(rng, 16, 500)
    mu2, s2 = _random_stats(rng, 16, 500)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-9)


def test_mismatched_statistics_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_statistics_in_any_batch_order_equal_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=3.0, size=(1000, 12)) * rng.uniform(0.1, 2.0, size=12)
    batches = np.array_split(x, [7, 100, 101, 640])
    forward = GaussianStats(12)
    for b in batches:
        forward.update(b)
    backward = GaussianStats(12)
    for b in reversed(batches):
        backward.update(b)
    for stats in (forward, backward):
        assert stats.n == 1000
        np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = GaussianStats(3).covariance


@pytest.mark.parametrize("n", [300, 20])  # more rows than dimensions, and fewer
def test_distance_to_a_fixed_reference_equals_the_direct_computation(n):
    rng = np.random.default_rng(3)
    mu_ref, s_ref = _random_stats(rng, 32, 400)
    to_ref = FrechetToReference(mu_ref, s_ref)
    x = rng.normal(size=(n, 32)) + 0.2
    direct = frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu_ref, s_ref)
    assert to_ref(x) == pytest.approx(direct, rel=1e-7)
    counts = rng.integers(0, 3, size=n)
    repeated = np.repeat(x, counts, axis=0)
    direct = frechet_distance(repeated.mean(0), np.cov(repeated, rowvar=False), mu_ref, s_ref)
    assert to_ref(x, counts) == pytest.approx(direct, rel=1e-7)


# ---------------------------------------------------------------------------- at D = 2,048


@pytest.fixture(scope="module")
def mixing():
    return np.random.default_rng(2048).normal(size=(D, D)) / math.sqrt(D)


def _features(mixing, n: int, seed: int, spectrum: str, shift: float = 0.0) -> np.ndarray:
    """n rows in D dimensions: "flat" variances in [0.25, 1] (well conditioned), "decaying"
    as exp(-k / 300) (like pool3's: a product conditioned to 1e-12), "near-singular" the
    decaying one with 200 directions scaled by 1e-7."""
    rng = np.random.default_rng(seed)
    if spectrum == "flat":
        scales = rng.uniform(0.5, 1.0, size=D)
    else:
        scales = np.exp(-np.arange(D) / 300)
        if spectrum == "near-singular":
            scales[-200:] *= 1e-7
    return (rng.normal(size=(n, D)) * scales) @ mixing + shift


def _exact(x1: np.ndarray, x2: np.ndarray) -> float:
    """FD from the feature matrices: tr((Σ1 Σ2)^½) is the nuclear norm of Y1 Y2ᵀ."""
    y1 = (x1 - x1.mean(0)) / math.sqrt(len(x1) - 1)
    y2 = (x2 - x2.mean(0)) / math.sqrt(len(x2) - 1)
    diff = x1.mean(0) - x2.mean(0)
    nuclear = np.linalg.svd(y1 @ y2.T, compute_uv=False).sum()
    return float(diff @ diff + (y1 * y1).sum() + (y2 * y2).sum() - 2 * nuclear)


def _ours(x1: np.ndarray, x2: np.ndarray) -> tuple[float, float]:
    """Both of marble's forms: from the two Gaussians, and x1's features to x2's Gaussian."""
    s1, s2 = GaussianStats.of(x1), GaussianStats.of(x2)
    return (
        frechet_distance(s1.mean, s1.covariance, s2.mean, s2.covariance),
        FrechetToReference(s2.mean, s2.covariance)(x1),
    )


def _pytorch_fid(x1: np.ndarray, x2: np.ndarray) -> float:
    s1, s2 = GaussianStats.of(x1), GaussianStats.of(x2)
    with np.errstate(all="ignore"):
        return float(calculate_frechet_distance(s1.mean, s1.covariance, s2.mean, s2.covariance))


def test_equals_pytorch_fid_where_sqrtm_is_well_conditioned(mixing):
    x1 = _features(mixing, 3000, 1, "flat")
    x2 = _features(mixing, 3000, 2, "flat", shift=0.05)
    theirs = _pytorch_fid(x1, x2)
    for ours in _ours(x1, x2):
        assert ours == pytest.approx(theirs, rel=1e-9)


@pytest.mark.parametrize(
    "n, spectrum",
    [(6, "decaying"), (100, "decaying"), (2047, "decaying"), (2100, "near-singular")],
)
def test_a_singular_or_near_singular_product_gives_the_exact_value(mixing, n, spectrum):
    """Fewer rows than dimensions, as every FID below N = 2,049 (Σ1 Σ2 singular), or 200
    directions of almost no variance."""
    x1 = _features(mixing, n, 3, spectrum)
    x2 = _features(mixing, n, 4, spectrum, shift=0.05)
    exact = _exact(x1, x2)
    for ours in _ours(x1, x2):
        assert ours == pytest.approx(exact, rel=1e-12)
    if n in (6, 2100):  # sqrtm of such a product: right to 1e-6, not to 1e-12
        assert _pytorch_fid(x1, x2) == pytest.approx(exact, rel=1e-6)


def test_features_of_another_dimension_are_refused():
    to_ref = FrechetToReference(np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"features must be \(N, 4\)"):
        to_ref(np.zeros((10, 5)))
