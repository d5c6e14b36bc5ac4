"""Atoms across time: the drift of the sample between tilt series, and atoms linked into trajectories.

A time series is an ordered list of tilt series of one particle. Between two of them the sample
may move as a whole (stage drift): a rigid translation ``d`` (A, sample frame), which moves the
projection of every atom in view k by ``(M_k d)[:2]`` on the detector (:mod:`atomsplat.geometry`).
Two estimates of it:

- :func:`drift_from_projections`: before the new series is reconstructed, from its projections
  and the previous atoms: each view's shift between the measured projection and the previous
  atoms projected into that view (sub-pixel cross-correlation), then the 3D translation that
  explains the shifts of all views in the least-squares sense (views that disagree dropped);
- :func:`drift_from_atoms`: once both are reconstructed, the mean displacement of the atoms
  matched one to one within a radius (atoms that moved on their own left out): the refined drift.

:func:`link_frames` then follows the atoms: with the drift removed (every frame in the frame of
the first), consecutive frames are matched one to one within ``max_distance`` (optimal
assignment, :func:`atomsplat.analysis.matching.match_atoms`); a matched pair continues a
trajectory, an atom without a partner in the frame before appeared, one without a partner in the
frame after vanished, and a matched atom moved when its displacement exceeds ``significance``
standard deviations of the displacement of an atom that stayed (from both atoms' position
uncertainties and that of the drift).

Everything here is pure (arrays in, arrays out); positions and lengths in A.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from atomsplat.analysis.matching import match_atoms
from atomsplat.geometry import view_rotations
from atomsplat.render.projector import project_isotropic

# A matched atom moved when its displacement exceeds this many standard deviations; below, its
# change is within what the noise does to an atom that stayed (the test's docstring gives the
# measured spread).
SIGNIFICANCE = 5.0
MAX_DISTANCE = 1.0  # A: atoms of consecutive frames farther apart than this are not the same atom


# ----------------------------------------------------------------------------- the drift
def drift_from_projections(
    positions: np.ndarray,
    sigmas: np.ndarray,
    weights: np.ndarray,
    projections: np.ndarray,
    tilt_angles: np.ndarray,
    pixel_size: float,
    tilt_axis_angle: float = 0.0,
    shifts: Optional[np.ndarray] = None,
    upsample: int = 20,
) -> Tuple[np.ndarray, np.ndarray]:
    """The rigid translation that carries atoms ``positions`` onto the sample of ``projections``.

    Each view's detector shift is the sub-pixel peak (``1 / upsample`` pixel) of the
    cross-correlation of the measured projection with the atoms projected into that view
    (:func:`skimage.registration.phase_cross_correlation`, unnormalised); the translation ``d``
    solves ``(M_k d)[:2] = shift_k`` for all views in the least-squares sense, again without the
    views whose residual exceeds three times the median (a view spoilt by noise or by a periodic
    lattice's side peak).

    Args:
        positions: (K, 3) atoms, A, sample frame; ``sigmas`` (K,) their widths, A; ``weights``
            (K,) their integrated weights (any unit: only the shape of the projections counts).
        projections: (N, H, W) the new tilt series; ``tilt_angles`` (N,) degrees; ``pixel_size``
            A; ``tilt_axis_angle`` degrees; ``shifts`` (N, 2) A, its known shifts, or None.
        upsample: precision of the shifts, 1 / ``upsample`` pixel.

    Returns:
        ``(d, residuals)``: d (3,) A, and (N,) each view's residual |(M_k d)[:2] - shift_k|, A
        (NaN for the views dropped, whose residual is measured all the same: see above).
    """
    from skimage.registration import phase_cross_correlation

    count, height, width = projections.shape
    rotations = view_rotations(tilt_angles, tilt_axis_angle)
    offsets = np.zeros((count, 2)) if shifts is None else np.asarray(shifts, float)
    with torch.no_grad():
        rendered = project_isotropic(
            torch.as_tensor(positions, dtype=torch.float32),
            torch.as_tensor(sigmas, dtype=torch.float32),
            torch.as_tensor(weights, dtype=torch.float32),
            torch.from_numpy(rotations).float(),
            torch.from_numpy(offsets).float(),
            float(pixel_size),
            height,
            width,
        ).numpy()
    moved = np.empty((count, 2))
    for k in range(count):
        (dy, dx), _, _ = phase_cross_correlation(
            projections[k], rendered[k], upsample_factor=upsample, normalization=None
        )
        moved[k] = (dx * pixel_size, dy * pixel_size)
    design = rotations[:, :2, :].reshape(-1, 3)  # (2N, 3): detector displacement = M[:2] d
    keep = np.ones(count, bool)
    for _ in range(2):
        rows = np.repeat(keep, 2)
        drift = np.linalg.lstsq(design[rows], moved.reshape(-1)[rows], rcond=None)[0]
        residuals = np.linalg.norm(np.einsum("kij,j->ki", rotations[:, :2, :], drift) - moved, axis=1)
        keep = residuals <= 3.0 * np.median(residuals) + 1e-3 * pixel_size
    return drift, np.where(keep, residuals, np.nan)


def drift_from_atoms(
    previous: np.ndarray, current: np.ndarray, guess=(0.0, 0.0, 0.0), max_distance: float = MAX_DISTANCE
) -> Tuple[np.ndarray, np.ndarray, int]:
    """The rigid translation from atoms ``previous`` to atoms ``current``, refined from ``guess``.

    Three times: ``previous + d`` is matched one to one to ``current`` within ``max_distance``,
    and ``d`` moves by the median of the matched displacements; the result is ``d`` plus the mean
    of the displacements within three robust standard deviations (1.4826 x the median absolute
    deviation, per axis) of their median: atoms that moved on their own do not pull the drift.

    Args:
        previous: (P, 3) A; current: (C, 3) A; guess: (3,) A, a first estimate (e.g.
            :func:`drift_from_projections`); max_distance: matching radius, A.

    Returns:
        ``(d, error, count)``: d (3,) A, its standard error (3,) A per axis (the spread of the
        displacements used over the square root of their count), and that count.

    Raises:
        ValueError: fewer than three atoms match (the guess is off by more than ``max_distance``).
    """
    previous, current = np.asarray(previous, float), np.asarray(current, float)
    drift = np.asarray(guess, float).copy()
    for _ in range(3):
        pi, ci, _ = match_atoms(previous + drift, current, max_distance)
        if len(pi) < 3:
            raise ValueError(
                f"drift: only {len(pi)} atoms match within {max_distance} A; the sample moved farther than the "
                "first estimate says"
            )
        drift = drift + np.median(current[ci] - previous[pi] - drift, axis=0)
    residual = current[ci] - previous[pi] - drift
    spread = 1.4826 * np.median(np.abs(residual), axis=0)
    inliers = np.all(np.abs(residual) <= 3.0 * spread + 1e-9, axis=1)
    used = residual[inliers]
    drift = drift + used.mean(axis=0)
    error = used.std(axis=0, ddof=1) / np.sqrt(len(used)) if len(used) > 1 else np.full(3, np.inf)
    return drift, error, int(len(used))


# ----------------------------------------------------------------------------- trajectories
@dataclass(frozen=True)
class Event:
    """A change of one atom between frame ``time - 1`` and frame ``time``.

    Attributes:
        time: the frame at which it is seen (the first frame is 0).
        kind: "appeared" (no partner in the frame before), "vanished" (no partner in this frame;
            ``position`` is where it was last seen) or "moved".
        track: the trajectory's id.
        position: (3,) A, in the first frame's frame.
        displacement: (3,) A, for "moved": its change since the frame before; else None.
        significance: for "moved": the displacement in standard deviations; else None.
    """

    time: int
    kind: str
    track: int
    position: np.ndarray
    displacement: Optional[np.ndarray] = None
    significance: Optional[float] = None

    @property
    def distance(self) -> Optional[float]:
        """|displacement|, A (None when not "moved")."""
        return None if self.displacement is None else float(np.linalg.norm(self.displacement))


@dataclass
class Trajectories:
    """Atoms of every frame linked across time.

    Attributes:
        tracks: one (K_t,) int array per frame: the trajectory id of each of its atoms (an atom
            keeps the id of its partner in the frame before; new ids count up from 0).
        events: the changes, by frame, then kind ("vanished", "appeared", "moved"), then id.
        significance: (K_t,) per frame: each atom's displacement since the frame before in
            standard deviations (NaN for the first frame and for atoms that appeared).
    """

    tracks: List[np.ndarray]
    events: List[Event]
    significance: List[np.ndarray]


def displacement_significance(
    displacement: np.ndarray,
    before: Optional[np.ndarray],
    after: Optional[np.ndarray],
    drift_error: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Each displacement in standard deviations: ``sqrt(sum_i delta_i^2 / s_i^2)`` with
    ``s_i^2 = before_i^2 + after_i^2 + drift_error_i^2`` per axis.

    Args:
        displacement: (M, 3) A.
        before, after: (M, 3) the position uncertainties (standard deviations per axis, A) of
            the atoms in the two frames; when either is None, ``s_i`` is instead the spread of
            the displacements themselves (1.4826 x the median absolute deviation about their
            median, per axis): what most atoms, which stayed, show.
        drift_error: (3,) A, the standard error of the drift between the frames, or None.

    Returns:
        (M,) the significances.
    """
    displacement = np.asarray(displacement, float)
    if before is None or after is None:
        centre = np.median(displacement, axis=0)
        variance = (1.4826 * np.median(np.abs(displacement - centre), axis=0)) ** 2 + 1e-12
        variance = np.broadcast_to(variance, displacement.shape)
    else:
        variance = np.asarray(before, float) ** 2 + np.asarray(after, float) ** 2
    if drift_error is not None:
        variance = variance + np.asarray(drift_error, float) ** 2
    return np.sqrt(np.sum(displacement**2 / variance, axis=1))


def link_frames(
    positions: Sequence[np.ndarray],
    uncertainties: Sequence[Optional[np.ndarray]],
    drift_errors: Optional[Sequence[Optional[np.ndarray]]] = None,
    max_distance: float = MAX_DISTANCE,
    significance: float = SIGNIFICANCE,
) -> Trajectories:
    """Link the atoms of consecutive frames into trajectories (the module docstring).

    Args:
        positions: per frame (K_t, 3) A, all in one frame (the drift removed).
        uncertainties: per frame (K_t, 3) position standard deviations per axis, A, or None.
        drift_errors: per frame (3,) A, the standard error of the drift removed between it and
            the frame before (the first frame's is not used), or None.
        max_distance: matching radius between consecutive frames, A.
        significance: a matched atom moved when its displacement exceeds this many standard
            deviations (:func:`displacement_significance`).
    """
    if not positions:
        return Trajectories([], [], [])
    frames = [np.asarray(p, float).reshape(-1, 3) for p in positions]
    if len(uncertainties) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(uncertainties)} uncertainties")
    drift_errors = list(drift_errors) if drift_errors is not None else [None] * len(frames)
    tracks = [np.arange(len(frames[0]))]
    scores = [np.full(len(frames[0]), np.nan)]
    events: List[Event] = []
    next_id = len(frames[0])
    for t in range(1, len(frames)):
        before, after = frames[t - 1], frames[t]
        pi, ci, _ = match_atoms(before, after, max_distance)
        ids = np.full(len(after), -1)
        ids[ci] = tracks[t - 1][pi]
        born = np.flatnonzero(ids < 0)
        ids[born] = next_id + np.arange(len(born))
        next_id += len(born)
        lost = np.setdiff1d(np.arange(len(before)), pi)
        previous_u, current_u = uncertainties[t - 1], uncertainties[t]
        delta = after[ci] - before[pi]
        z = displacement_significance(
            delta,
            None if previous_u is None or current_u is None else np.asarray(previous_u)[pi],
            None if previous_u is None or current_u is None else np.asarray(current_u)[ci],
            drift_errors[t],
        )
        score = np.full(len(after), np.nan)
        score[ci] = z
        events += [Event(t, "vanished", int(tracks[t - 1][i]), before[i]) for i in lost]
        events += [Event(t, "appeared", int(ids[i]), after[i]) for i in born]
        moved = np.flatnonzero(z > significance)
        events += [Event(t, "moved", int(ids[ci[m]]), after[ci[m]], delta[m], float(z[m])) for m in moved]
        tracks.append(ids)
        scores.append(score)
    order = {"vanished": 0, "appeared": 1, "moved": 2}
    events.sort(key=lambda e: (e.time, order[e.kind], e.track))
    return Trajectories(tracks, events, scores)
