"""The filter's keep rules: each turns the similarities of all raw pairs into a threshold;
pairs at or above it are kept.

- "mixture": fit a two-Gaussian mixture to the similarities and cut where a pair is as
  likely to come from the upper ("caption fits") component as from the lower one
  (DivideMix's clean/noisy split, Li et al. 2020). A from-scratch CLIP's cosines are not
  calibrated like OpenAI's, so a fixed number would not transfer.
- "otsu": the cut that best separates the two modes of the histogram (Otsu 1979).
- "threshold": a fixed similarity (LAION used 0.28 with OpenAI's ViT-B/32).
- "top_fraction": keep the best fraction (DataComp's best single CLIP filter kept 30 %).

Pure numpy: no files, no models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (Otsu 1979, Eq. 18): the cut that maximises the between-class
    variance ω0 ω1 (μ0 - μ1)² of a 1-D sample split into two classes.

    For CLIP similarities of pairs where a minority carry wrong captions, the two classes are
    "caption matches" and "caption belongs to another image". Returns a value between the
    two modes; values >= threshold belong to the upper class.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2 or values.min() == values.max():
        raise ValueError("otsu_threshold needs at least two distinct finite values")
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    p = counts / counts.sum()
    omega0 = np.cumsum(p)  # weight of the lower class for a cut after bin k
    mu_k = np.cumsum(p * centres)
    mu_total = mu_k[-1]
    omega1 = 1.0 - omega0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_total * omega0 - mu_k) ** 2 / (omega0 * omega1)
    between[~np.isfinite(between)] = -1.0
    k = int(np.argmax(between))
    return float(edges[k + 1])  # the upper edge of the last bin of the lower class


def fit_two_gaussians(
    values: np.ndarray, iterations: int = 200, tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-component 1-D Gaussian mixture fitted by EM (Dempster et al. 1977), started
    from Otsu's split. Returns (weights, means, stds), each (2,), sorted by mean."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    cut = otsu_threshold(x)
    upper = x >= cut
    if upper.all() or not upper.any():
        raise ValueError("fit_two_gaussians needs values on both sides of Otsu's cut")
    # variance floor: a component must not collapse onto a few identical values
    floor = max(1e-12, 1e-6 * x.var())
    parts = (x[~upper], x[upper])
    w = np.array([p.size / x.size for p in parts])
    mu = np.array([p.mean() for p in parts])
    var = np.array([max(p.var(), floor) for p in parts])
    previous = -np.inf
    for _ in range(iterations):
        # E step: responsibilities r (N, 2), computed in log space
        log_p = np.log(w) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (x[:, None] - mu) ** 2 / var
        log_norm = np.logaddexp(log_p[:, 0], log_p[:, 1])
        r = np.exp(log_p - log_norm[:, None])
        # M step
        n_k = r.sum(axis=0) + 1e-300
        w = n_k / x.size
        mu = (r * x[:, None]).sum(axis=0) / n_k
        var = np.maximum((r * (x[:, None] - mu) ** 2).sum(axis=0) / n_k, floor)
        log_likelihood = log_norm.mean()
        if log_likelihood - previous < tol:
            break
        previous = log_likelihood
    order = np.argsort(mu)
    return w[order], mu[order], np.sqrt(var[order])


def equal_posterior_point(weights, means, stds) -> float:
    """The x between the two means where both components of a two-Gaussian mixture are
    equally likely: the root in (means[0], means[1]) of
    log w0 - log s0 - (x - m0)² / 2s0² = log w1 - log s1 - (x - m1)² / 2s1²,
    a quadratic a x² + b x + c = 0. Falls back to the nearer end when no root lies between."""
    (w0, w1), (m0, m1), (s0, s1) = weights, means, stds
    a = 1 / (2 * s1**2) - 1 / (2 * s0**2)
    b = m0 / s0**2 - m1 / s1**2
    c = m1**2 / (2 * s1**2) - m0**2 / (2 * s0**2) + np.log(w0 * s1 / (w1 * s0))
    if abs(a) < 1e-12:  # equal variances: a linear equation
        roots = [-c / b]
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            roots = []
        else:
            roots = [(-b - np.sqrt(disc)) / (2 * a), (-b + np.sqrt(disc)) / (2 * a)]
    inside = [r for r in roots if m0 <= r <= m1]
    if inside:
        return float(inside[0])
    # one component dominates everywhere between the means: cut at the end it loses
    mid = (m0 + m1) / 2
    lower_wins = np.log(w0 / s0) - (mid - m0) ** 2 / (2 * s0**2) > np.log(w1 / s1) - (
        mid - m1
    ) ** 2 / (2 * s1**2)
    return float(m1 if lower_wins else m0)


def mixture_threshold(values: np.ndarray) -> float:
    """Keep threshold from a two-Gaussian mixture of the similarities: the point where a
    pair is as likely to come from the upper ("caption fits") component as from the lower
    one. DivideMix (Li et al. 2020) splits clean from noisy labels this way, on losses."""
    return equal_posterior_point(*fit_two_gaussians(values))


# ---------------------------------------------------------------------------- the rules by name


class KeepSettings(Protocol):
    threshold: float  # for "threshold"
    top_fraction: float  # for "top_fraction"


def _fixed(similarities: np.ndarray, settings: KeepSettings) -> float:
    return settings.threshold


def _top_fraction(similarities: np.ndarray, settings: KeepSettings) -> float:
    return float(np.quantile(similarities, 1.0 - settings.top_fraction))


def _otsu(similarities: np.ndarray, settings: KeepSettings) -> float:
    return otsu_threshold(similarities)


def _mixture(similarities: np.ndarray, settings: KeepSettings) -> float:
    return mixture_threshold(similarities)


KEEP_RULES: dict[str, Callable[[np.ndarray, KeepSettings], float]] = {
    "mixture": _mixture,
    "otsu": _otsu,
    "threshold": _fixed,
    "top_fraction": _top_fraction,
}
