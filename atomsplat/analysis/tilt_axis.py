"""A cheap check that a tilt series turns about the tilt axis it declares.

In a parallel-beam tilt series about an axis, every point of the sample keeps its coordinate
along the axis: the 1-D profile of a projection along the axis (the projection summed across
the axis) is the same at every tilt, up to a shift, as long as the sample stays in the field of
view. The profile across the axis changes with the tilt. Each profile is divided by the total of
its projection (dose and thickness change it), shifted by a whole number of pixels onto the mean
profile (alignment errors), and its variation is the mean squared distance from that mean.
White noise adds the same expected amount to both variations (each sums every pixel once), so
noise pulls their ratio towards 1 and never past it.

When the profile along the declared axis varies clearly more than the one across it
(:data:`WARNING_RATIO`), the series most likely turns about the perpendicular axis: a wrong
``tilt_axis_angle``. The check is a heuristic: in strong noise it gives no verdict either way,
and a sample that leaves the field of view across the axis (a slab) breaks the invariance it
relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atomsplat.geometry import pixel_centers

# Warn when the profile along the declared axis varies this many times more than across it.
WARNING_RATIO = 2.0


class TiltAxisWarning(UserWarning):
    """The projections look tilted about another axis than the declared one."""


@dataclass(frozen=True)
class TiltAxisCheck:
    """Variation across the tilts of the two marginal profiles of a tilt series.

    Attributes:
        tilt_axis_angle: the declared in-plane angle of the tilt axis, degrees.
        along: variation of the profile along the declared axis (0: identical at every tilt).
        across: variation of the profile across it (the perpendicular axis, +90 degrees).
    """

    tilt_axis_angle: float
    along: float
    across: float

    @property
    def ratio(self) -> float:
        """``along / across``; NaN when neither profile varies."""
        return self.along / self.across if self.across > 0 else (math.inf if self.along > 0 else math.nan)

    @property
    def suspicious(self) -> bool:
        """True when the series looks tilted about the perpendicular axis instead."""
        return self.ratio > WARNING_RATIO

    def message(self) -> str:
        """What a user reads when :attr:`suspicious`: the declared axis and the likely one."""
        declared = self.tilt_axis_angle
        other = 90.0 - (-declared % 180.0)  # the perpendicular axis, as an angle in (-90, 90]
        return (
            f"the projections look tilted about the detector axis at {other:g} degrees, not about the "
            f"declared tilt axis (tilt_axis_angle {declared:g} degrees): the profile along the declared "
            f"axis varies {self.ratio:.1f}x more across the tilts than the profile across it, where a tilt "
            f"about the declared axis keeps it fixed. Check tilt_axis_angle (in metadata.json)."
        )


def marginal_profiles(projections: np.ndarray, tilt_axis_angle: float):
    """1-D profiles of each projection along and across an in-plane axis.

    Args:
        projections: (N, H, W) projections; pixel (i, j) as in :mod:`atomsplat.geometry`.
        tilt_axis_angle: in-plane angle of the axis from the detector x axis, counter-clockwise, degrees.

    Returns:
        along (N, B), across (N, B): sums of the pixels whose centre lies in each 1-pixel bin of the
        coordinate along the axis, and of the coordinate across it (B bins cover the detector).
    """
    n, height, width = projections.shape
    x = pixel_centers(width, 1.0)[None, :]
    y = pixel_centers(height, 1.0)[:, None]
    c, s = math.cos(math.radians(tilt_axis_angle)), math.sin(math.radians(tilt_axis_angle))
    u = np.broadcast_to(x * c + y * s, (height, width))
    v = np.broadcast_to(-x * s + y * c, (height, width))
    bins = int(math.ceil(math.hypot(height, width))) + 1
    flat = projections.reshape(n, -1).astype(np.float64)

    def profiles(coord):
        index = np.floor(coord.ravel() + bins / 2.0).astype(np.int64)
        return np.stack([np.bincount(index, weights=page, minlength=bins) for page in flat])

    return profiles(u), profiles(v)


def profile_variation(profiles: np.ndarray) -> float:
    """Mean squared distance of ``profiles`` (N, B) from their mean, each first moved by the whole
    number of bins (up to B / 4) that best correlates it with the mean profile.

    0 when all profiles are copies of one another shifted by whole bins.
    """
    bins = profiles.shape[1]
    size = 2 * bins  # zero-padded: the correlation does not wrap around
    mean_spectrum = np.conj(np.fft.rfft(profiles.mean(axis=0), size))
    correlation = np.fft.irfft(np.fft.rfft(profiles, size, axis=1) * mean_spectrum, size, axis=1)
    reach = bins // 4
    lags = np.r_[0 : reach + 1, -reach:0]
    best = lags[np.argmax(correlation[:, lags], axis=1)]
    aligned = np.stack([np.roll(p, -lag) for p, lag in zip(profiles, best)])
    return float(np.mean(np.sum((aligned - aligned.mean(axis=0)) ** 2, axis=1)))


def check_tilt_axis(projections: np.ndarray, tilt_axis_angle: float = 0.0) -> TiltAxisCheck:
    """Compare how much the profiles along and across the declared tilt axis vary across the tilts.

    Args:
        projections: (N, H, W) tilt series (any units).
        tilt_axis_angle: the declared in-plane angle of the tilt axis, degrees.

    Returns:
        A :class:`TiltAxisCheck`; its ``suspicious`` is True when the declared axis looks wrong.
    """
    projections = np.asarray(projections)
    if projections.ndim != 3:
        raise ValueError(f"projections must have shape (N, H, W), got {projections.shape}")
    along, across = marginal_profiles(projections, tilt_axis_angle)
    totals = projections.reshape(len(projections), -1).sum(axis=1, dtype=np.float64)
    if np.all(totals > 0):
        along, across = along / totals[:, None], across / totals[:, None]
    return TiltAxisCheck(float(tilt_axis_angle), profile_variation(along), profile_variation(across))
