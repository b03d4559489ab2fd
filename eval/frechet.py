"""Fréchet distance between Gaussian fits of two feature sets (FID when the features are the
standard Inception's pool3; fd_clip in a CLIP embedding space).

    FD = ||μ1 - μ2||² + tr(Σ1) + tr(Σ2) - 2 tr((Σ1 Σ2)^½)          (Dowson & Landau 1982;
                                                                    Heusel et al. 2017, Eq. 6)

`frechet_distance` follows pytorch-fid's `calculate_frechet_distance` step by step (float64,
scipy's sqrtm, an eps offset on the diagonals when the product is singular, an error on a
significant imaginary part), so both give the same number on the same statistics.
`GaussianStats` accumulates mean and covariance over batches in float64 with Chan et al.'s
pairwise update, so batches in any order give the same statistics.
`FrechetToReference` evaluates many resampled feature sets against one fixed reference fast
(for bootstrap intervals): with A = Σ_ref^½ computed once, tr((Σ_ref Σ)^½) = Σ_i sqrt(λ_i) over
the eigenvalues of the symmetric A Σ A.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2); means (D,), covariances (D, D)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # a singular product: offset both diagonals
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.max(np.abs(np.diagonal(covmean).imag))
        if imaginary > 1e-3:
            raise ValueError(f"Fréchet distance: sqrtm has an imaginary component {imaginary:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


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
    """FD of many feature sets, or weighted resamples of one, against one fixed reference
    N(mu_ref, sigma_ref): what bootstrap intervals need, fast.

    tr((Σ_ref Σ)^½) is the sum of square roots of the eigenvalues of Σ_ref Σ. With Σ the
    covariance of n rows Y (weighted, centred, scaled by 1/sqrt(n - 1)), Σ = YᵀY, and the
    non-zero eigenvalues of Σ_ref YᵀY are those of the n x n matrix Y Σ_ref Yᵀ: one small
    symmetric eigenproblem when n < D. Otherwise the D x D symmetric A Σ A with A = Σ_ref^½
    (computed once) has them. Equal to `frechet_distance` where the product is well
    conditioned; eigenvalues below 0 from rounding count as 0."""

    def __init__(self, mu_ref: np.ndarray, sigma_ref: np.ndarray):
        self.mu = np.asarray(mu_ref, dtype=np.float64)
        self.sigma = np.asarray(sigma_ref, dtype=np.float64)
        self.trace = float(np.trace(self.sigma))
        self._root: np.ndarray | None = None

    def _sqrt_sigma(self) -> np.ndarray:
        if self._root is None:
            eigenvalues, vectors = np.linalg.eigh(self.sigma)
            self._root = (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T
        return self._root

    def __call__(self, features: np.ndarray, counts: np.ndarray | None = None) -> float:
        """FD of the rows of features (N, D), each weighted by counts (N,) (default 1)."""
        x = np.asarray(features, dtype=np.float64)
        w = np.ones(len(x)) if counts is None else np.asarray(counts, dtype=np.float64)
        keep = w > 0
        x, w = x[keep], w[keep]
        n = w.sum()
        if n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {n:g}")
        mu = w @ x / n
        y = (x - mu) * np.sqrt(w / (n - 1))[:, None]  # Σ = yᵀ y
        trace = float((y * y).sum())
        if len(y) < len(self.mu):
            eigenvalues = np.linalg.eigvalsh(y @ self.sigma @ y.T)
        else:
            root = self._sqrt_sigma()
            inner = root @ (y.T @ y) @ root
            eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
        tr_covmean = float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())
        diff = mu - self.mu
        return float(diff @ diff + self.trace + trace - 2 * tr_covmean)
