"""CMMD (Jayasumana et al. 2024): the squared maximum mean discrepancy between two sets of
CLIP embeddings under a Gaussian RBF kernel, unbiased, with no normality assumption.

    k(x, y) = exp(-||x - y||² / (2 σ²))
    MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j)
             - 2/(mn) Σ_{i,j} k(x_i, y_j)                     (Gretton et al. 2012, Eq. 3)

The paper uses σ = 10 on unit-norm embeddings and reports 1000 × MMD²; `cmmd` does the same.

Paired sets. Eq. 3 is unbiased when every item is drawn independently. An evaluation's sets
are not: sample i is drawn from the caption of reference image i, so x_i and y_i are closer
than two independent draws, the cross term is too large and MMD² comes out below 0 where
the two distributions are equal. With `groups` (one label per item, equal labels for items
drawn from one prompt) every sum leaves out the pairs that share a label, and each mean is
taken over the pairs it keeps:

    MMD²_g = mean_{g(x_i) ≠ g(x_j)} k(x_i, x_j) + mean_{g(y_i) ≠ g(y_j)} k(y_i, y_j)
             - 2 mean_{g(x_i) ≠ g(y_j)} k(x_i, y_j)

Each kept pair is two draws from independent prompts, so each mean is unbiased for its
expectation under the marginal distributions, and MMD²_g is unbiased for MMD² between them.
With one sample per prompt and one reference per prompt it is the U-statistic over pairs
(Gretton et al. 2012, Lemma 6).
"""

from __future__ import annotations

import numpy as np

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


def _kernel(sq: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-np.clip(sq, 0, None) / (2 * sigma**2))


def _kernel_sum(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    """Σ_ij k(a_i, b_j) for a (M, D), b (N, D), float64."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T  # (M, N)
    return float(_kernel(sq, sigma).sum())


def _same_group_pairs(ga: np.ndarray, gb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (I, J) of every pair with ga[I] == gb[J] (an item with itself included
    when ga is gb)."""
    order = np.argsort(gb, kind="stable")
    sorted_b = gb[order]
    lo = np.searchsorted(sorted_b, ga, side="left")
    hi = np.searchsorted(sorted_b, ga, side="right")
    sizes = hi - lo
    rows = np.repeat(np.arange(len(ga)), sizes)
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    cols = order[np.arange(sizes.sum()) + starts]
    return rows, cols


def _pair_kernel(a: np.ndarray, b: np.ndarray, rows, cols, sigma: float) -> np.ndarray:
    diff = a[rows] - b[cols]
    return _kernel((diff * diff).sum(1), sigma)


def mmd2_unbiased(
    x: np.ndarray,
    y: np.ndarray,
    sigma: float,
    x_groups: np.ndarray | None = None,
    y_groups: np.ndarray | None = None,
) -> float:
    """The unbiased MMD² estimate between samples x (M, D) and y (N, D); M, N >= 2. With
    groups (integer labels, (M,) and (N,)), pairs that share a label are left out."""
    ones = np.ones((1, len(x)), dtype=np.int64)
    return float(
        mmd2_unbiased_resampled(x, y, sigma, ones, x_groups=x_groups, y_groups=y_groups)[0]
    )


def cmmd(
    x: np.ndarray,
    y: np.ndarray,
    sigma: float = CMMD_SIGMA,
    scale: float = CMMD_SCALE,
    x_groups: np.ndarray | None = None,
    y_groups: np.ndarray | None = None,
) -> float:
    """CMMD as Jayasumana et al. report it: scale × MMD²_u of the embeddings (paired sets:
    give the groups)."""
    return scale * mmd2_unbiased(x, y, sigma, x_groups, y_groups)


def mmd2_unbiased_resampled(
    x: np.ndarray,
    y: np.ndarray,
    sigma: float,
    counts: np.ndarray,
    block: int = 2048,
    x_groups: np.ndarray | None = None,
    y_groups: np.ndarray | None = None,
) -> np.ndarray:
    """MMD²_u between resamples of x and the fixed y, one per row of counts (R, M): row r
    holds x_i counts[r, i] times.

    Without groups, a resample's within-set sum leaves out only each position's own pair
    (k = 1 on the diagonal), as Eq. 3 does for the repeated rows. With groups, every pair of
    positions whose items share a label is left out (copies of one item included), and the
    cross sum leaves out x_i with the y of its own label.

    Computed in blocks of the kernel matrix, never all of it: cᵀ K_xx c for every row c
    costs R · M² multiply-adds and M² kernel values."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)  # (R, M)
    m, n = c.sum(1), len(y)  # resample sizes (R,), reference size
    if len(x) < 2 or n < 2:
        raise ValueError(f"MMD needs at least 2 samples on each side, got {len(x)} and {n}")
    if (x_groups is None) != (y_groups is None):
        raise ValueError("give groups for both sets or for neither")
    quad = np.zeros(len(c))  # cᵀ K_xx c per replicate
    cross = np.zeros(len(c))  # cᵀ K_xy 1 per replicate
    sq_x = (x * x).sum(1)
    for i in range(0, len(x), block):
        xi = x[i : i + block]
        for j in range(0, len(x), block):
            xj = x[j : j + block]
            k = _kernel(
                sq_x[i : i + block, None] + sq_x[None, j : j + block] - 2 * xi @ xj.T, sigma
            )
            quad += ((c[:, i : i + block] @ k) * c[:, j : j + block]).sum(1)
        sq = sq_x[i : i + block, None] + (y * y).sum(1)[None, :] - 2 * xi @ y.T
        cross += c[:, i : i + block] @ _kernel(sq, sigma).sum(1)
    if x_groups is None:
        xx = (quad - m) / (m * (m - 1))
        yy = (_kernel_sum(y, y, sigma) - n) / (n * (n - 1))
        return xx + yy - 2 * cross / (m * n)
    gx, gy = np.asarray(x_groups), np.asarray(y_groups)
    if gx.shape != (len(x),) or gy.shape != (n,):
        raise ValueError(f"one group label per item: {gx.shape} for {len(x)}, {gy.shape} for {n}")
    # within x: leave out every pair of positions whose items share a label
    rows, cols = _same_group_pairs(gx, gx)
    k_same = _pair_kernel(x, x, rows, cols, sigma)
    xx_num = quad - (c[:, rows] * c[:, cols] * k_same).sum(1)
    xx_den = m * m - (c[:, rows] * c[:, cols]).sum(1)
    # within y (fixed)
    rows_y, cols_y = _same_group_pairs(gy, gy)
    yy_num = _kernel_sum(y, y, sigma) - _pair_kernel(y, y, rows_y, cols_y, sigma).sum()
    yy_den = n * n - len(rows_y)
    # across: x_i against every y but those of its own label
    rows_xy, cols_xy = _same_group_pairs(gx, gy)
    xy_num = cross - c[:, rows_xy] @ _pair_kernel(x, y, rows_xy, cols_xy, sigma)
    matched = np.bincount(rows_xy, minlength=len(x))  # y items sharing x_i's label
    xy_den = c @ (n - matched)
    if (xx_den <= 0).any() or yy_den <= 0 or (xy_den <= 0).any():
        raise ValueError("every pair shares a group: no independent pairs to compare")
    return xx_num / xx_den + yy_num / yy_den - 2 * xy_num / xy_den
