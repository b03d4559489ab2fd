"""Fréchet distance between Gaussian fits of two feature sets (FID when the features are the
standard Inception's pool3; fd_clip in a CLIP embedding space).

    FD = ||μ1 - μ2||² + tr(Σ1) + tr(Σ2) - 2 tr((Σ1 Σ2)^½)          (Dowson & Landau 1982;
                                                                    Heusel et al. 2017, Eq. 6)

The only hard term is tr((Σ1 Σ2)^½), the sum of the square roots of the eigenvalues of
Σ1 Σ2 (real and ≥ 0: a product of two PSD matrices). pytorch-fid takes the D x D square
root of the non-symmetric product (`scipy.linalg.sqrtm`, a Schur decomposition; seconds at
D = 2,048 on a CPU). Here the same number comes from a singular value decomposition: with
A = Σ2^½ (symmetric, from `eigh`) and any F with Σ1 = FᵀF, the non-zero eigenvalues of
Σ1 Σ2 = FᵀF A A are those of (FA)ᵀ(FA) (AB and BA share them), so

    tr((Σ1 Σ2)^½) = Σ singular values of F A = ||F A||_*

F is the centred feature rows scaled by 1/sqrt(n - 1) when the features are at hand and
n < D (F A is n x D: small), else the triangle of their QR decomposition or Σ1^½ (D x D).
Singular values come with an absolute error of about eps times the largest, where square
roots of eigenvalues would turn rounding's ±1e-16 on a zero into ±1e-8, thousands of times
over when n < D. Where `sqrtm` is well conditioned the two agree to 1e-9 relative; where
the product is singular (any FID from fewer than D + 1 images) `sqrtm` loses digits and this
is the exact value to rounding (tests/eval/test_frechet.py holds both against pytorch-fid).

`frechet_distance` takes two Gaussians; `FrechetToReference` takes features against a fixed
reference, with A computed once: what a point's value and its bootstrap replicates need.
`GaussianStats` accumulates mean and covariance over batches in float64 with Chan et al.'s
pairwise update, so batches in any order give the same statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix. Eigenvalues below D·eps of the
    largest (numpy's matrix_rank tolerance) count as 0: a singular covariance has them in
    place of its zeros, from rounding, and their square roots would add up to ~1e-7 of a
    distance."""
    eigenvalues, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    floor = eigenvalues.max(initial=0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return (vectors * np.sqrt(np.where(eigenvalues > floor, eigenvalues, 0.0))) @ vectors.T


def nuclear_norm(matrix: np.ndarray) -> float:
    """The sum of a matrix's singular values."""
    return float(np.linalg.svd(matrix, compute_uv=False).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2); means (D,), covariances (D, D)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}"
        )
    diff = mu1 - mu2
    tr_covmean = nuclear_norm(sqrt_psd(sigma1) @ sqrt_psd(sigma2))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


# ---------------------------------------------------------------------------- streaming statistics


@dataclass
class GaussianStats:
    """Running mean and covariance of D-dimensional features, float64.

    update(batch (B, D)) merges a batch (Chan, Golub & LeVeque 1979): with n_a, n_b rows,
    δ = mean_b - mean_a, the merged M2 = M2_a + M2_b + δ δᵀ n_a n_b / (n_a + n_b), where M2
    is the sum of outer products of deviations from the mean; covariance = M2 / (n - 1).
    """

    dim: int
    n: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)

    def __post_init__(self):
        self.mean = np.zeros(self.dim)
        self.m2 = np.zeros((self.dim, self.dim))

    def update(self, features: np.ndarray) -> GaussianStats:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (B, {self.dim}), got {x.shape}")
        n_b = len(x)
        if n_b == 0:
            return self
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += m2_b + np.outer(delta, delta) * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n
        return self

    @property
    def covariance(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        return self.m2 / (self.n - 1)

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStats:
        features = np.asarray(features)
        return cls(features.shape[1]).update(features)


class FrechetToReference:
    """FD of feature sets, or weighted resamples of one, against one fixed reference
    N(mu_ref, sigma_ref): a point's value and its bootstrap replicates.

    The features' covariance is Σ = YᵀY (rows weighted, centred, scaled by 1/sqrt(n - 1));
    tr((Σ Σ_ref)^½) = ||F A||_* with A = Σ_ref^½ computed once and F = Y when n < D, else
    the triangle of Y's QR decomposition (see the module docstring)."""

    def __init__(self, mu_ref: np.ndarray, sigma_ref: np.ndarray):
        self.mu = np.asarray(mu_ref, dtype=np.float64)
        self.sigma = np.asarray(sigma_ref, dtype=np.float64)
        self.trace = float(np.trace(self.sigma))
        self._root: np.ndarray | None = None

    def _sqrt_sigma(self) -> np.ndarray:
        if self._root is None:
            self._root = sqrt_psd(self.sigma)
        return self._root

    def __call__(self, features: np.ndarray, counts: np.ndarray | None = None) -> float:
        """FD of the rows of features (N, D), each weighted by counts (N,) (default 1)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.mu):
            raise ValueError(f"features must be (N, {len(self.mu)}), got {x.shape}")
        w = np.ones(len(x)) if counts is None else np.asarray(counts, dtype=np.float64)
        keep = w > 0
        x, w = x[keep], w[keep]
        n = w.sum()
        if n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {n:g}")
        mu = w @ x / n
        y = (x - mu) * np.sqrt(w / (n - 1))[:, None]  # Σ = yᵀ y
        trace = float((y * y).sum())
        factor = y if len(y) < len(self.mu) else np.linalg.qr(y, mode="r")  # Σ = factorᵀ factor
        tr_covmean = nuclear_norm(factor @ self._sqrt_sigma())
        diff = mu - self.mu
        return float(diff @ diff + self.trace + trace - 2 * tr_covmean)
