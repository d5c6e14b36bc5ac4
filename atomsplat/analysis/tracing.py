"""Atom tracing in a reconstructed volume, as the paper's baselines do it.

1. Candidates: local maxima of the volume (no larger value among the 26 neighbours) above a
   threshold: by default Otsu's threshold of the candidates' own intensities, which splits the many
   weak maxima of noise and streaks from the strong maxima of atoms whatever the units; or a
   given fraction of the volume's maximum. Otsu needs many atoms and a regularised volume: on the
   bundled 201-atom demo series (noise sigma 50), and on the same particle at -70:70:3, it leaves at
   most 0.5 % false atoms in FBP with the Hann filter and in SIRT with 20-50 iterations, but 54-79 %
   in noisier volumes (FBP with the bare ramp filter, SIRT with 100 iterations); such volumes need
   a fraction of the maximum instead, or regularisation.
2. Refinement (optional): a weighted least-squares fit of a quadratic in log-intensity (a 3-D
   Gaussian with full covariance) to the 3 x 3 x 3 neighbourhood of each candidate, weights the
   squared intensities; exact for a noise-free Gaussian sampled at voxel centres. A fit that is not
   a maximum, or moves the peak by a voxel or more along an axis, keeps the voxel centre.
3. Minimum distance: candidates are taken in decreasing intensity (of their peak voxel) and a
   candidate is accepted only when its (refined) position lies at least ``min_distance`` (2.0 A in
   the paper) from every accepted one. The sequential rule is resolved without a Python loop over
   peaks: the close pairs come from a KD-tree, and rounds of vectorised updates decide every
   candidate whose stronger neighbours are all decided (accepted when none of them was accepted,
   rejected otherwise).

Volume convention: that of :mod:`atomsplat.analysis.baselines`, an array indexed
``volume[ix, iy, iz]`` whose voxel centres are ``pixel_centers(n, voxel_size)`` along each axis
(:mod:`atomsplat.geometry`), so positions come out in A in the sample frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree
from skimage.filters import threshold_otsu

from atomsplat.geometry import pixel_centers

PAPER_MIN_DISTANCE = 2.0  # A


@dataclass
class TracedAtoms:
    """Atoms found in a volume.

    Attributes:
        positions: (K, 3) positions in A in the sample frame, strongest first.
        intensities: (K,) volume value at each peak voxel (volume units).
        threshold: the intensity threshold that candidates had to exceed (volume units).
    """

    positions: np.ndarray
    intensities: np.ndarray
    threshold: float


def local_maxima(volume: np.ndarray) -> np.ndarray:
    """(M, 3) integer indices of the voxels no smaller than any of their 26 neighbours
    (borders compare only with voxels inside the volume), excluding the volume's minimum value."""
    vol = np.asarray(volume)
    peak = (vol == maximum_filter(vol, size=3, mode="constant", cval=-np.inf)) & (vol > vol.min())
    return np.argwhere(peak)


def select_separated(positions: np.ndarray, intensities: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of the peaks kept by the greedy minimum-distance rule, strongest first.

    Taken in decreasing intensity (ties in input order), a peak is kept when it lies at least
    ``min_distance`` from every peak kept before it; a peak closer than that only to peaks that
    were themselves rejected is kept.

    Args:
        positions: (M, 3) positions (any length unit).
        intensities: (M,) peak values.
        min_distance: smallest distance between kept peaks (same unit), >= 0.
    """
    order = np.argsort(-np.asarray(intensities, dtype=float), kind="stable")
    pos = np.asarray(positions, dtype=float)[order]
    n = len(pos)
    if n == 0 or min_distance <= 0:
        return order
    pairs = cKDTree(pos).query_pairs(min_distance * (1.0 - 1e-12), output_type="ndarray")  # strictly closer
    stronger, weaker = pairs.min(axis=1), pairs.max(axis=1)  # ranks: smaller is stronger
    undecided, accepted, rejected = 0, 1, 2
    state = np.zeros(n, dtype=np.int8)
    while np.any(state == undecided):
        s_state = state[stronger]
        blocked = np.zeros(n, dtype=bool)
        blocked[weaker[s_state == accepted]] = True
        waiting = np.zeros(n, dtype=bool)
        waiting[weaker[s_state == undecided]] = True
        open_ = state == undecided
        state[open_ & blocked] = rejected
        state[open_ & ~blocked & ~waiting] = accepted
    return order[state == accepted]


def _refine(volume: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sub-voxel offsets (K, 3), in voxels, of peaks at integer ``index`` (K, 3), from a weighted
    least-squares fit of ``log v = c + g.d + d^T Q d / 2`` over the 3 x 3 x 3 neighbourhood."""
    steps = np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T  # (27, 3)
    dx, dy, dz = steps.T.astype(float)
    design = np.stack([np.ones(27), dx, dy, dz, dx * dx / 2, dy * dy / 2, dz * dz / 2, dx * dy, dx * dz, dy * dz], 1)
    padded = np.pad(np.asarray(volume, dtype=float), 1, mode="constant")  # outside reads 0: weight 0
    where = index[:, None, :] + 1 + steps[None]  # (K, 27, 3)
    values = padded[where[..., 0], where[..., 1], where[..., 2]]  # (K, 27)
    positive = values > 0
    log_v = np.log(np.where(positive, values, 1.0))
    weight = np.where(positive, values, 0.0) ** 2
    normal = np.einsum("kn,ni,nj->kij", weight, design, design)
    rhs = np.einsum("kn,ni,kn->ki", weight, design, log_v)
    offsets = np.zeros((len(index), 3))
    solvable = np.linalg.matrix_rank(normal) == design.shape[1]
    if not np.any(solvable):
        return offsets
    coef = np.linalg.solve(normal[solvable], rhs[solvable][..., None])[..., 0]
    g = coef[:, 1:4]
    q = np.empty((len(coef), 3, 3))
    q[:, [0, 1, 2], [0, 1, 2]] = coef[:, 4:7]
    q[:, 0, 1] = q[:, 1, 0] = coef[:, 7]
    q[:, 0, 2] = q[:, 2, 0] = coef[:, 8]
    q[:, 1, 2] = q[:, 2, 1] = coef[:, 9]
    maximum = np.all(np.linalg.eigvalsh(q) < 0, axis=1)
    shift = np.zeros_like(g)
    shift[maximum] = -np.linalg.solve(q[maximum], g[maximum][..., None])[..., 0]
    good = maximum & np.all(np.abs(shift) < 1.0, axis=1)
    offsets[np.flatnonzero(solvable)[good]] = shift[good]
    return offsets


def trace_atoms(
    volume,
    voxel_size: float,
    *,
    min_distance: float = PAPER_MIN_DISTANCE,
    threshold: float | str = "otsu",
    refine: bool = True,
) -> TracedAtoms:
    """Atoms as the separated local maxima of a volume (module docstring).

    Args:
        volume: (Nx, Ny, Nz) float array indexed [ix, iy, iz], voxel centres at
            ``pixel_centers(n, voxel_size)`` per axis (:mod:`atomsplat.analysis.baselines`).
        voxel_size: voxel edge, A.
        min_distance: smallest distance between accepted atoms, A (the paper: 2.0).
        threshold: ``"otsu"`` (Otsu's threshold of the local maxima's intensities) or a number in
            [0, 1): candidates must exceed that fraction of the volume's maximum.
        refine: fit each accepted peak for a sub-voxel position.

    Returns:
        :class:`TracedAtoms`, strongest first.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"volume must have shape (Nx, Ny, Nz), got {vol.shape}")
    if not np.issubdtype(vol.dtype, np.floating) or not np.all(np.isfinite(vol)):
        raise ValueError("volume must hold finite floating-point values")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size!r}")
    if not min_distance >= 0:
        raise ValueError(f"min_distance must not be negative, got {min_distance!r}")

    index = local_maxima(vol)
    values = vol[tuple(index.T)]
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or a fraction of the maximum, got {threshold!r}")
        level = float(threshold_otsu(values)) if len(np.unique(values)) > 1 else float(vol.min())
    elif 0 <= threshold < 1:
        level = float(threshold * vol.max())
    else:
        raise ValueError(f"a numeric threshold is a fraction of the maximum in [0, 1), got {threshold!r}")
    strong = values > level
    index, values = index[strong], values[strong]

    grid = index.astype(float)
    if refine and len(index):
        grid += _refine(vol, index)
    origin = np.array([pixel_centers(n, voxel_size)[0] for n in vol.shape])
    positions = origin + grid * voxel_size
    keep = select_separated(positions, values, min_distance)
    return TracedAtoms(positions=positions[keep], intensities=values[keep], threshold=level)
