"""Atom tracing on hand-made volumes with known answers: sub-voxel refinement, the 2.0 A rule
(against a plain greedy loop), thresholds, the sample-frame grid and bad input."""

import numpy as np
import pytest

from atomsplat.analysis.tracing import local_maxima, select_separated, trace_atoms
from atomsplat.geometry import pixel_centers

P = 0.25


def gaussians(shape, centres, amplitudes, sigma=0.45, covariance=None):
    """Point samples at the voxel centres of a sum of Gaussians (positions in A)."""
    axes = [pixel_centers(n, P) for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (Nx, Ny, Nz, 3)
    inv = np.linalg.inv(np.eye(3) * sigma**2 if covariance is None else covariance)
    out = np.zeros(shape)
    for c, a in zip(np.asarray(centres, float), amplitudes):
        d = grid - c
        out += a * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    return out.astype(np.float32)


# Odd and even sides: the grid origin must follow pixel_centers on each axis.
SHAPE = (41, 36, 33)
CENTRES = np.array([[1.03, -2.11, 0.37], [-2.6, 1.42, 2.2], [2.24, 2.3, -2.41], [-0.4, 0.3, -1.93]])
AMPLITUDES = [1.0, 0.7, 0.5, 0.9]


def nearest_distance(found, true):
    return np.linalg.norm(found[:, None] - true[None], axis=2).min(axis=0)


def test_refined_positions_are_sub_voxel_exact():
    volume = gaussians(SHAPE, CENTRES, AMPLITUDES)
    traced = trace_atoms(volume, P, threshold=0.1)
    assert len(traced.positions) == 4
    assert np.all(nearest_distance(traced.positions, CENTRES) < 0.1 * P)
    assert np.all(np.diff(traced.intensities) <= 0)  # strongest first
    coarse = trace_atoms(volume, P, threshold=0.1, refine=False)
    # Unrefined: the voxel centre, at most half a voxel off along each axis.
    assert np.all(nearest_distance(coarse.positions, CENTRES) <= np.sqrt(3) * P / 2 + 1e-9)


def test_refinement_handles_an_elongated_tilted_peak_and_noise():
    turn = np.deg2rad(30.0)
    rot = np.array([[1, 0, 0], [0, np.cos(turn), -np.sin(turn)], [0, np.sin(turn), np.cos(turn)]])
    covariance = rot @ np.diag([0.4, 0.4, 0.9]) ** 2 @ rot.T  # a missing-wedge-like streak
    centre = np.array([[0.31, -0.58, 0.17]])
    volume = gaussians(SHAPE, centre, [1.0], covariance=covariance)
    assert nearest_distance(trace_atoms(volume, P).positions, centre)[0] < 0.01 * P
    noisy = volume + np.random.default_rng(0).normal(0.0, 0.01, SHAPE).astype(np.float32)
    traced = trace_atoms(noisy, P, threshold=0.5)
    assert len(traced.positions) == 1
    assert nearest_distance(traced.positions, centre)[0] < 0.1 * P


@pytest.mark.parametrize("gap, kept", [(1.9, 1), (2.1, 2)])
def test_peaks_closer_than_two_angstrom_keep_only_the_stronger(gap, kept):
    centres = np.array([[0.0, 0.0, 0.0], [gap, 0.0, 0.0]])
    volume = gaussians(SHAPE, centres, [0.8, 1.0], sigma=0.3)
    traced = trace_atoms(volume, P, threshold=0.1)
    assert len(traced.positions) == kept
    assert np.linalg.norm(traced.positions[0] - centres[1]) < 0.1 * P  # the stronger one first


def test_a_peak_blocked_only_by_a_rejected_peak_is_kept():
    # A > B > C in intensity; B is within 2 A of A and of C, C is 3.6 A from A: A and C are kept.
    positions = np.array([[0.0, 0, 0], [1.8, 0, 0], [3.6, 0, 0]])
    kept = select_separated(positions, np.array([3.0, 2.0, 1.0]), 2.0)
    np.testing.assert_array_equal(kept, [0, 2])


def test_select_separated_equals_the_greedy_loop():
    rng = np.random.default_rng(1)
    positions = rng.uniform(0.0, 12.0, (500, 3))
    intensities = rng.random(500)
    greedy = []
    for i in np.argsort(-intensities):
        if all(np.linalg.norm(positions[i] - positions[j]) >= 2.0 for j in greedy):
            greedy.append(i)
    np.testing.assert_array_equal(select_separated(positions, intensities, 2.0), greedy)


def test_thresholds():
    volume = gaussians(SHAPE, CENTRES, [1.0, 1.0, 1.0, 0.2])
    assert len(trace_atoms(volume, P, threshold=0.1).positions) == 4
    assert len(trace_atoms(volume, P, threshold=0.3).positions) == 3


def test_otsu_separates_many_atoms_from_noise():
    # 27 atoms 2.6 A apart, two species, in noise whose local maxima outnumber them forty to one.
    lattice = 2.6 * (np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) - 1) + 0.07
    amplitudes = np.where(np.arange(27) % 3 == 0, 0.5, 1.0)
    noise = np.random.default_rng(2).normal(0.0, 0.04, SHAPE).astype(np.float32)
    traced = trace_atoms(gaussians(SHAPE, lattice, amplitudes) + noise, P)
    assert 0.16 < traced.threshold < 0.5
    assert len(traced.positions) == 27
    assert np.all(nearest_distance(traced.positions, lattice) < 0.25)


def test_local_maxima_ignore_flat_background():
    volume = np.zeros((8, 8, 8), np.float32)
    volume[2, 3, 4] = 1.0
    volume[6, 6, 6] = 0.5
    np.testing.assert_array_equal(local_maxima(volume), [[2, 3, 4], [6, 6, 6]])


def test_bad_input_is_refused():
    volume = gaussians((10, 10, 10), [[0.0, 0.0, 0.0]], [1.0])
    with pytest.raises(ValueError, match="shape"):
        trace_atoms(volume[0], P)
    with pytest.raises(ValueError, match="voxel_size"):
        trace_atoms(volume, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        trace_atoms(volume, P, threshold="mean")
    with pytest.raises(ValueError, match="threshold"):
        trace_atoms(volume, P, threshold=1.5)
    with pytest.raises(ValueError, match="finite"):
        trace_atoms(np.full_like(volume, np.nan), P)
