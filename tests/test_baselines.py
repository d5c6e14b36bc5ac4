"""FBP and SIRT / SART baselines on projections of Gaussians with known positions: geometry (no axis
flipped or swapped, tilt axis and shifts undone), scale (mass, re-projection), agreement with
ASTRA's own FBP, and FBP / SIRT + tracing on the bundled demo particle."""

from pathlib import Path

import astra
import numpy as np
import pytest
import torch
from ase.io import read
from scipy.ndimage import maximum_filter

import atomsplat
from atomsplat.analysis.baselines import align_projections, angle_weights, fbp, reproject, sirt
from atomsplat.analysis.matching import evaluate
from atomsplat.analysis.tracing import trace_atoms
from atomsplat.data.formats import read_tilt_series
from atomsplat.geometry import pixel_centers, view_rotations
from atomsplat.render.projector import project_isotropic

DEMO = Path(atomsplat.__file__).parent / "assets" / "demo"
P, H, W, DEPTH = 0.5, 32, 24, 28
ALL_ANGLES = np.arange(-90.0, 90.0, 2.0)
# An asymmetric object, each atom at a voxel centre ((idx + 0.5 - n / 2) p) of the (W, H, DEPTH)
# grid: a mirrored, swapped or shifted axis puts some peak in another voxel.
VOXELS = np.array([[16, 9, 23], [4, 19, 10], [13, 26, 5]])  # (ix, iy, iz)
WEIGHTS = np.array([10.0, 6.0, 8.0])
SIGMA = 0.7


def atom_positions(voxels=VOXELS):
    return np.stack([pixel_centers(n, P)[voxels[:, a]] for a, n in enumerate((W, H, DEPTH))], axis=1)


def project(angles, tilt_axis_angle=0.0, shifts=None, positions=None):
    positions = atom_positions() if positions is None else positions
    k = len(positions)
    rot = torch.from_numpy(view_rotations(angles, tilt_axis_angle))
    off = torch.zeros(len(angles), 2, dtype=torch.float64) if shifts is None else torch.as_tensor(shifts)
    out = project_isotropic(
        torch.from_numpy(positions),
        torch.full((k,), SIGMA, dtype=torch.float64),
        torch.from_numpy(WEIGHTS[:k]),
        rot,
        off,
        P,
        H,
        W,
    )
    return out.numpy().astype(np.float32)


def strongest_peaks(volume, k):
    """(k, 3) voxel indices of the k largest local maxima."""
    peak = np.argwhere(volume == maximum_filter(volume, size=3))
    values = volume[tuple(peak.T)]
    return peak[np.argsort(-values)[:k]]


def assert_peaks_at_atoms(volume):
    assert volume.shape == (W, H, DEPTH)
    found = strongest_peaks(volume, len(VOXELS))
    assert sorted(map(tuple, found)) == sorted(map(tuple, VOXELS))


def test_fbp_all_angles_puts_every_peak_in_its_voxel():
    assert_peaks_at_atoms(fbp(project(ALL_ANGLES), ALL_ANGLES, P, depth=DEPTH))


@pytest.mark.parametrize("subsets", [1, len(ALL_ANGLES)])
def test_sirt_and_sart_peaks_mass_and_reprojection(subsets):
    data = project(ALL_ANGLES)
    iterations = 100 if subsets == 1 else 5
    volume = sirt(data, ALL_ANGLES, P, iterations=iterations, subsets=subsets, depth=DEPTH)
    assert_peaks_at_atoms(volume)
    # Density in data units per A: the volume holds the total weight, as every projection does.
    assert volume.sum() * P**3 == pytest.approx(WEIGHTS.sum(), rel=0.02)
    again = reproject(volume, ALL_ANGLES, P)
    assert again.shape == data.shape
    assert np.abs(again - data).sum() / np.abs(data).sum() < 0.03


def test_missing_wedge_sirt_still_finds_the_atoms():
    wedge = np.arange(-60.0, 61.0, 3.0)
    assert_peaks_at_atoms(sirt(project(wedge), wedge, P, depth=DEPTH))


def test_tilt_axis_and_shifts_are_undone():
    angles = np.arange(-90.0, 90.0, 3.0)
    shifts = np.random.default_rng(0).uniform(-1.0, 1.0, (len(angles), 2))
    compact = 0.4 * atom_positions()  # stays on the detector when the tilt axis turns
    plain = project(angles, positions=compact)
    recorded = project(angles, tilt_axis_angle=25.0, shifts=shifts, positions=compact)
    aligned = align_projections(recorded, P, 25.0, shifts)
    assert np.abs(aligned - plain).max() < 0.01 * plain.max()
    expected = strongest_peaks(fbp(plain, angles, P, depth=DEPTH), 3)
    found = strongest_peaks(fbp(recorded, angles, P, depth=DEPTH, tilt_axis_angle=25.0, shifts=shifts), 3)
    np.testing.assert_array_equal(found, expected)


def test_fbp_equals_astra_fbp_on_one_slice():
    # ASTRA's FBP weights every view by pi / N: the same as angle_weights for uniform angles over pi.
    data = project(ALL_ANGLES)
    column = VOXELS[0, 0]
    ours = fbp(data, ALL_ANGLES, P, filter_name="ramp", depth=DEPTH)[column].T  # (iz, iy)
    vol_geom = astra.create_vol_geom(DEPTH, H)
    proj_geom = astra.create_proj_geom("parallel", 1.0, H, np.deg2rad(ALL_ANGLES))
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    sino = astra.data2d.create("-sino", proj_geom, data[:, :, column] / P)
    rec = astra.data2d.create("-vol", vol_geom)
    cfg = astra.astra_dict("FBP")
    cfg.update(ProjectorId=projector, ProjectionDataId=sino, ReconstructionDataId=rec)
    alg = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(alg)
        theirs = astra.data2d.get(rec)
    finally:
        astra.algorithm.delete(alg)
        astra.data2d.delete([sino, rec])
        astra.projector.delete(projector)
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()


def test_angle_weights():
    full = angle_weights(np.arange(-90.0, 91.0, 1.0))  # both ends are one view: scaled to pi
    assert full.sum() == pytest.approx(np.pi)
    wedge = angle_weights(np.arange(-70.0, 70.0, 3.0))
    np.testing.assert_allclose(wedge, np.deg2rad(3.0))
    np.testing.assert_allclose(angle_weights([10.0, -10.0, 0.0]), np.deg2rad([10.0, 10.0, 10.0]))


def test_bad_input_is_refused():
    data = project(ALL_ANGLES)
    with pytest.raises(ValueError, match="tilt angles"):
        fbp(data, ALL_ANGLES[:-1], P)
    with pytest.raises(ValueError, match="filter"):
        fbp(data, ALL_ANGLES, P, filter_name="gauss")
    with pytest.raises(ValueError, match="depth"):
        sirt(data, ALL_ANGLES, P, depth=0)
    with pytest.raises(ValueError, match="subsets"):
        sirt(data, ALL_ANGLES, P, subsets=len(ALL_ANGLES) + 1)
    with pytest.raises(ValueError, match="NaN"):
        fbp(np.full_like(data, np.nan), ALL_ANGLES, P)
    with pytest.raises(ValueError, match="shifts"):
        fbp(data, ALL_ANGLES, P, shifts=np.zeros((3, 2)))


# --- end to end: FBP / SIRT + tracing on the bundled demo particle ------------------------------


@pytest.mark.parametrize("method", ["fbp", "sirt"])
def test_baseline_and_tracing_find_the_demo_particle(method):
    # 201 Pt-Ni atoms, -90:90:3, 0.25 A pixels, probe blur 0.5 A, Gaussian noise sigma 50.
    series = read_tilt_series(DEMO)
    truth = read(DEMO / "ground_truth.xyz").positions
    reconstruct = {"fbp": fbp, "sirt": sirt}[method]
    volume = reconstruct(series.projections, series.tilt_angles, series.pixel_size)
    report = evaluate(trace_atoms(volume, series.pixel_size).positions, truth)
    assert report.tpr >= 0.98 and report.fpr <= 0.05, report.summary()
    assert report.rmse < 0.2
