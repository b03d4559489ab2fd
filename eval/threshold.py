"""Choosing a keep threshold from a similarity distribution."""

from __future__ import annotations

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
