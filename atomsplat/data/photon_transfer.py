"""A detector's gain and offset from the noise of the projections themselves (photon transfer).

Shot noise makes a pixel's variance grow with its mean. A detector that records k counts (Poisson)
as x = k / gain + offset + read noise (data units) gives

    var(x) = slope * mean(x) + intercept,    slope = 1 / gain,

and the effective counts ``gain * (x - offset_eff)`` with ``offset_eff = -intercept / slope`` have
a variance equal to their mean: Poisson's, the read noise carried as a constant number of counts
(read_noise^2 * gain^2) that a fitted pedestal takes (the shifted-Poisson approximation of
Poisson-Gaussian noise, exact in mean and variance). Counts recorded as whole numbers have
intercept 0 and offset 0; a detector offset b gives offset b.

The measurement, from one stack without repeated exposures: the pixels in 2 x 2 blocks, each
block's mean m and diagonal detail d = (x00 - x01 - x10 + x11) / 2. For independent pixel noise
E[d^2] is the four pixels' mean variance, so, the variance being linear in the mean, a bin of
blocks has mean(d^2) = slope * mean(m) + intercept exactly, plus what the signal itself puts in d
(its mixed second difference: a leak). Blocks are binned by the mean of their 8 neighbouring
blocks, which is independent of their own noise (binning by m itself would select blocks by their
noise). The horizontal and vertical details (first differences: a leak one order larger) tell
where the signal leaks: only bins where they agree with d^2 within :data:`LEAK_TOLERANCE` (plus
twice their statistical error) are fitted, by least squares weighted by each bin's statistical
variance (2 mean(d^2)^2 / blocks). On the low-dose preset's series (0.195 A pixels) the slope
comes within 1.3 % of the true one and the offset within 0.02 counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

BINS = 20
"""Bins of the neighbouring blocks' mean, by quantile."""

LEAST_BLOCKS = 1000
"""Blocks a bin needs (the statistical error of its mean(d^2) is then under 5 %); a stack with
fewer than ``BINS * LEAST_BLOCKS`` 2 x 2 blocks (80,000 pixels) is too small to measure."""

LEAK_TOLERANCE = 0.1
"""A bin is fitted where its horizontal and vertical details' mean squares exceed its diagonal
one's by at most this fraction (plus twice the ratio's statistical error): the signal does not
leak into the details there."""

LEAST_CLEAN_BINS = 3
"""Bins without leak needed for a line."""


@dataclass(frozen=True)
class PhotonTransfer:
    """A measured variance-against-mean line of a stack and the bins it was fitted to.

    Attributes:
        slope: data units per count (1 / gain).
        intercept: variance at a mean of 0, data units^2.
        slope_error: the slope's standard error from the bins' statistics.
        means: (B,) the bins' mean block values, data units.
        variances: (B,) the bins' mean squared diagonal details, data units^2.
        clean: (B,) bool, the bins fitted (no leak of the signal).
    """

    slope: float
    intercept: float
    slope_error: float
    means: np.ndarray
    variances: np.ndarray
    clean: np.ndarray

    @property
    def gain(self) -> float:
        """Counts per data unit."""
        return 1.0 / self.slope

    @property
    def offset(self) -> float:
        """Data units at zero effective counts: ``-intercept / slope``."""
        return -self.intercept / self.slope

    def offset_at(self, slope: float) -> float:
        """The offset for a slope known otherwise (a lattice of counts): the intercept refitted
        with the slope fixed, over the clean bins with their weights."""
        means, variances = self.means[self.clean], self.variances[self.clean]
        weights = 1.0 / variances**2
        intercept = float(np.sum(weights * (variances - slope * means)) / np.sum(weights))
        return -intercept / slope

    @property
    def growth(self) -> float:
        """The fitted variance at the brightest clean bin over that at the darkest."""
        means = self.means[self.clean]
        low, high = (self.slope * m + self.intercept for m in (means.min(), means.max()))
        return high / low if low > 0 else float("inf")


def block_details(projections: np.ndarray):
    """2 x 2 blocks of ``projections`` (N, H, W): means, diagonal, horizontal and vertical details,
    each (N, H // 2, W // 2), float64 (a trailing odd row or column is left out)."""
    x = np.asarray(projections, dtype=np.float64)
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    a, b = x[:, 0:h:2, 0:w:2], x[:, 0:h:2, 1:w:2]
    c, d = x[:, 1:h:2, 0:w:2], x[:, 1:h:2, 1:w:2]
    return (a + b + c + d) / 4, (a - b - c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2


def neighbour_means(means: np.ndarray) -> np.ndarray:
    """The mean of each block's 8 neighbouring blocks (edges repeated), same shape as ``means``."""
    padded = np.pad(means, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = means.shape[1:]
    total = sum(padded[:, 1 + i : 1 + i + h, 1 + j : 1 + j + w] for i in (-1, 0, 1) for j in (-1, 0, 1))
    return (total - means) / 8


def photon_transfer(projections: np.ndarray) -> Optional[PhotonTransfer]:
    """The variance-against-mean line of ``projections`` (N, H, W), data units (module docstring),
    or None where the stack is too small (:data:`LEAST_BLOCKS`), its values do not spread over
    distinct bins, or fewer than :data:`LEAST_CLEAN_BINS` bins are free of the signal's leak."""
    means, diagonal, horizontal, vertical = block_details(projections)
    if means.size < BINS * LEAST_BLOCKS:
        return None
    order = np.argsort(neighbour_means(means).reshape(-1), kind="stable")
    m, d2, h2, v2 = (part.reshape(-1) for part in (means, diagonal**2, horizontal**2, vertical**2))
    rows = [
        (m[part].mean(), d2[part].mean(), max(h2[part].mean(), v2[part].mean()), len(part))
        for part in np.array_split(order, BINS)
    ]
    bin_means, variances, details, blocks = (np.array(column) for column in zip(*rows))
    if np.any(variances <= 0) or np.ptp(bin_means) <= 0:
        return None
    tolerance = 1.0 + LEAK_TOLERANCE + 2.0 * 2.0 / np.sqrt(blocks)
    clean = details <= tolerance * variances
    if clean.sum() < LEAST_CLEAN_BINS or np.ptp(bin_means[clean]) <= 0:
        return None
    weights = blocks[clean] / (2.0 * variances[clean] ** 2)
    design = np.stack([bin_means[clean], np.ones(int(clean.sum()))], axis=1)
    normal = design.T @ (weights[:, None] * design)
    slope, intercept = np.linalg.solve(normal, design.T @ (weights * variances[clean]))
    slope_error = float(np.sqrt(np.linalg.inv(normal)[0, 0]))
    return PhotonTransfer(float(slope), float(intercept), slope_error, bin_means, variances, clean)
