"""The ground-truth potential volume: its grid against the voxelizer's, and exact symmetries."""

import numpy as np
import pytest
import torch
from ase import Atoms

from atomsplat.geometry import pixel_centers
from atomsplat.render.voxelize import voxelize
from atomsplat.sim.potential import default_volume_shape, potential_volume, volume_origin

VOXEL = 0.25
SHAPE = (24, 26, 28)  # (nx, ny, nz): unequal, so a transposed axis would show


def _centroid(volume):
    """Centroid (x, y, z) in A of a volume on the centred grid."""
    centres = [pixel_centers(n, VOXEL) for n in volume.shape]
    total = volume.sum()
    return np.array(
        [(volume.sum(axis=tuple(a for a in range(3) if a != axis)) * centres[axis]).sum() / total for axis in range(3)]
    )


@pytest.mark.parametrize("symbol", ["Au", "C"])
@pytest.mark.parametrize("position", [(0.1, -0.07, 0.3), (0.37, 0.26, -0.4), (-0.61, 0.02, 0.11)])
def test_one_atom_lands_where_the_voxelizer_puts_it(symbol, position):
    """The abTEM volume and a voxelized Gaussian at the same point peak in the same voxel and
    have the same centroid (to 0.01 voxel): the two grids coincide."""
    pot = potential_volume(Atoms(symbol, positions=[position]), VOXEL, SHAPE)
    assert pot.shape == SHAPE and pot.dtype == np.float32
    gauss = voxelize(
        torch.tensor([position], dtype=torch.float64),
        torch.tensor([0.5], dtype=torch.float64),
        torch.tensor([1.0], dtype=torch.float64),
        volume_origin(SHAPE, VOXEL),
        SHAPE,
        VOXEL,
    ).numpy()
    peak = np.unravel_index(pot.argmax(), SHAPE)
    assert peak == np.unravel_index(gauss.argmax(), SHAPE)
    # The peak voxel is the one that holds the atom.
    peak_centre = volume_origin(SHAPE, VOXEL) + (np.array(peak) + 0.5) * VOXEL
    np.testing.assert_array_less(np.abs(peak_centre - position), VOXEL / 2)
    np.testing.assert_allclose(_centroid(pot), position, atol=0.01 * VOXEL)
    np.testing.assert_allclose(_centroid(gauss), position, atol=0.01 * VOXEL)


def test_atom_at_a_voxel_centre_is_mirror_symmetric():
    centre = volume_origin(SHAPE, VOXEL) + (np.array([11, 13, 14]) + 0.5) * VOXEL
    pot = potential_volume(Atoms("Pt", positions=[centre]), VOXEL, SHAPE)
    core = pot[1:22, 3:24, 4:25]  # 21^3 voxels centred on voxel (11, 13, 14)
    for axis in range(3):
        np.testing.assert_allclose(core, np.flip(core, axis=axis), rtol=1e-5, atol=1e-6 * pot.max())


def test_moving_an_atom_one_voxel_moves_the_volume_one_voxel():
    position = np.array([0.05, -0.1, 0.2])
    before = potential_volume(Atoms("Au", positions=[position]), VOXEL, SHAPE)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = VOXEL
        after = potential_volume(Atoms("Au", positions=[position + step]), VOXEL, SHAPE)
        np.testing.assert_allclose(
            np.roll(before, 1, axis=axis)[1:-1, 1:-1, 1:-1],
            after[1:-1, 1:-1, 1:-1],
            rtol=1e-5,
            atol=1e-6 * before.max(),
        )


def test_a_sub_grid_holds_the_same_values_and_outside_atoms_add_their_tails():
    """Atoms are padded for, never wrapped: a small grid equals the middle of a larger one, also
    with an atom outside the small grid (its tail reaches in) and atoms near the large one's faces."""
    atoms = Atoms("AuPtC", positions=[(0.3, -0.2, 0.1), (2.2, 0.4, -0.9), (-0.4, 2.9, 0.6)])
    small = potential_volume(atoms, VOXEL, (12, 12, 12))
    large = potential_volume(atoms, VOXEL, (24, 26, 28))
    np.testing.assert_allclose(small, large[6:18, 7:19, 8:20], rtol=1e-5, atol=1e-6 * large.max())
    outside = potential_volume(atoms[1:2], VOXEL, (12, 12, 12))  # Pt at x = 2.2 A, grid to 1.5 A
    assert 0 < outside.max() < 0.5 * large.max()


def test_potentials_add():
    a = Atoms("Au", positions=[(0.3, -0.2, 0.1)])
    b = Atoms("C", positions=[(-1.1, 0.7, 0.4)])
    np.testing.assert_allclose(
        potential_volume(a + b, VOXEL, SHAPE),
        potential_volume(a, VOXEL, SHAPE) + potential_volume(b, VOXEL, SHAPE),
        rtol=1e-5,
        atol=1e-6 * 3000,
    )


def test_default_shape():
    boxed = Atoms("Au", positions=[(35.0, 35.0, 35.0)], cell=(70.0, 60.0, 50.0))
    assert default_volume_shape(boxed, 0.25) == (280, 240, 200)
    free = Atoms("Au2", positions=[(1.0, 0.0, 0.0), (-1.0, 0.0, 0.0)])
    assert default_volume_shape(free, 0.25) == (40, 40, 40)  # 2 * (1 + 4) A
    np.testing.assert_allclose(volume_origin((40, 40, 40), 0.25), -5.0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no atoms"):
        potential_volume(Atoms(), VOXEL, SHAPE)
    with pytest.raises(ValueError, match="voxel"):
        potential_volume(Atoms("Au", positions=[(0, 0, 0)]), 0.0, SHAPE)
    with pytest.raises(ValueError, match="shape"):
        potential_volume(Atoms("Au", positions=[(0, 0, 0)]), VOXEL, (10, 10))
