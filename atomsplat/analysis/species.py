"""Species from fitted atom weights.

The integrated weight of an atom grows with its atomic number, so the species of a sample with
known elements separate as clusters of log-weight (DESIGN.md, "What a quick prototype showed":
a 2-means split of log-weight). Clusters are found by exact 1-D k-means and named in order: the
lightest cluster gets the element of smallest atomic number.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from ase.data import atomic_numbers

# Above this many distinct log-weights, k-means runs on the means of this many equal-width bins.
MAX_POINTS = 1024


def _check_elements(elements) -> list:
    elements = [elements] if isinstance(elements, str) else list(elements)
    bad = [e for e in elements if not isinstance(e, str) or atomic_numbers.get(e, 0) == 0]
    if bad or not elements:
        raise ValueError(f"elements must be chemical symbols such as 'Au' or 'Pt'; got {elements}")
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements must not repeat; got {elements}")
    return sorted(elements, key=atomic_numbers.get)


def _log_weights(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1:
        raise ValueError(f"weights must have shape (N,), got {w.shape}")
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError("weights must be finite and positive")
    return np.log(w)


def _kmeans_1d(x, counts, k: int) -> np.ndarray:
    """Exact k-means of sorted distinct 1-D points ``x`` (m,) with multiplicities ``counts`` (m,).

    Dynamic programming over the first index of each cluster, vectorised as an (m, m) table of
    segment costs from prefix sums: O(k m^2) time, O(m^2) memory. Returns the (k,) first index of
    each cluster in ``x``, increasing, starting with 0.
    """
    m = len(x)
    x = x - np.average(x, weights=counts)  # centring keeps the prefix-sum variances accurate
    s0 = np.r_[0.0, np.cumsum(counts)]
    s1 = np.r_[0.0, np.cumsum(counts * x)]
    s2 = np.r_[0.0, np.cumsum(counts * x * x)]
    j, i = np.arange(m)[:, None], np.arange(m)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        n = s0[i + 1] - s0[j]
        cost = s2[i + 1] - s2[j] - (s1[i + 1] - s1[j]) ** 2 / n  # cost[j, i]: SSE of x[j..i]
    cost = np.where(j <= i, np.maximum(cost, 0.0), np.inf)

    best = cost[0]  # best[i]: least SSE of x[0..i] in the clusters so far
    first = []  # first[c][i]: first index of the last cluster in the best split of x[0..i]
    for _ in range(k - 1):
        total = best[:-1, None] + cost[1:]  # (m-1, m): previous clusters end at j-1, new one at j
        arg = np.argmin(total, axis=0)
        best = total[arg, np.arange(m)]
        first.append(arg + 1)
    starts, end = [0], m - 1
    for f in reversed(first):
        starts.append(int(f[end]))
        end = starts[-1] - 1
    return np.array([0] + sorted(starts[1:]))


def label_by_weight(weights, elements) -> np.ndarray:
    """Label atoms with species by clustering their log-weights.

    The log-weights are split into ``len(elements)`` clusters by exact 1-D k-means (least total
    squared deviation from the cluster means). Up to :data:`MAX_POINTS` distinct values the
    optimum is exact; above, the values are grouped in that many equal-width bins of log-weight
    and the optimum over bins (each its count times its mean) is exact: cluster boundaries fall
    on bin edges, 1/1024 of the log-weight range apart. Lloyd iterations
    would be cheaper but can stop in a poor local optimum when species are unequally abundant;
    the dynamic programme cannot.

    Args:
        weights: (N,) positive integrated weights of the atoms (any unit).
        elements: chemical symbols of the species present, in any order; heavier elements
            (larger atomic number) get larger weights.

    Returns:
        (N,) array of chemical symbols.
    """
    elements = _check_elements(elements)
    y = _log_weights(weights)
    symbols = np.array(elements)
    k = len(elements)
    if k == 1 or len(y) == 0:
        return symbols[np.zeros(len(y), int)]

    x, point, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(x) > MAX_POINTS:
        edges = np.linspace(y.min(), y.max(), MAX_POINTS + 1)
        b = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, MAX_POINTS - 1)
        _, point, counts = np.unique(b, return_inverse=True, return_counts=True)
        x = np.bincount(point, weights=y) / counts  # mean log-weight of each non-empty bin
    if len(x) < k:
        raise ValueError(f"{len(x)} distinct weights cannot be split into {k} species {elements}")
    starts = _kmeans_1d(x, counts, k)
    return symbols[np.searchsorted(starts, point, side="right") - 1]


def separability(weights, labels) -> float:
    """How well species separate by log-weight: the smallest Fisher ratio over pairs of species.

    For species a and b with log-weight means m and variances v,
    ``F = (m_a - m_b)^2 / (v_a + v_b)``. For two normal populations of equal variance the best
    threshold misclassifies a fraction ``Phi(-sqrt(F / 2))``: F = 2 gives 16 %, F = 8 gives 2.3 %,
    F = 18 gives 0.13 %. Identical species give 0; two species each of one exact value give inf.

    Args:
        weights: (N,) positive integrated weights.
        labels: (N,) species labels (any hashable values); at least two distinct.
    """
    y = _log_weights(weights)
    labels = np.asarray(labels)
    if labels.shape != y.shape:
        raise ValueError(f"labels must have the shape of weights {y.shape}, got {labels.shape}")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("separability needs at least two species")
    stats = [(y[labels == c].mean(), y[labels == c].var()) for c in classes]
    ratios = []
    for (ma, va), (mb, vb) in combinations(stats, 2):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append((ma - mb) ** 2 / (va + vb) if ma != mb else 0.0)
    return float(min(ratios))
