"""The voxelizer against hand-made cases: mass, brute-force integrals, the projector, sub-grids."""

import math

import numpy as np
import pytest
import torch

from atomsplat.render.projector import project_isotropic, project_isotropic_dense
from atomsplat.render.voxelize import voxelize


def _atoms(count, half_extent, seed=0):
    g = torch.Generator().manual_seed(seed)
    positions = (torch.rand(count, 3, generator=g, dtype=torch.float64) * 2 - 1) * half_extent
    sigmas = 0.2 + 0.6 * torch.rand(count, generator=g, dtype=torch.float64)
    weights = 1.0 + 9.0 * torch.rand(count, generator=g, dtype=torch.float64)
    return positions, sigmas, weights


@pytest.mark.parametrize("window, tolerance", [(4.0, 2e-4), (8.0, 1e-12)])
def test_mass_of_atoms_well_inside(window, tolerance):
    positions, sigmas, weights = _atoms(40, 2.0)  # widths <= 0.8: 8 widths from the faces
    volume = voxelize(positions, sigmas, weights, (-8.5, -9.0, -9.5), (68, 72, 76), 0.25, window)
    mass = float(volume.sum()) * 0.25**3
    assert mass == pytest.approx(float(weights.sum()), rel=tolerance)
    assert float(volume.min()) >= 0.0


@pytest.mark.parametrize("sigma", [0.15, 0.6])  # below a voxel and above
def test_single_gaussian_matches_brute_force_integral(sigma):
    """Mean density of each voxel from 24^3 midpoint samples of the 3D Gaussian inside it."""
    centre = np.array([0.13, -0.21, 0.37])
    voxel, weight, shape, origin = 0.4, 3.0, (6, 6, 6), np.array([-1.2, -1.2, -1.2])
    volume = voxelize(
        torch.tensor(centre)[None],
        torch.tensor([sigma], dtype=torch.float64),
        torch.tensor([weight], dtype=torch.float64),
        origin,
        shape,
        voxel,
        window=8.0,
    ).numpy()
    sub = 24
    offsets = (np.arange(sub) + 0.5) / sub * voxel
    expected = np.empty(shape)
    for idx in np.ndindex(*shape):
        corner = origin + np.array(idx) * voxel
        x, y, z = np.meshgrid(*(corner[a] + offsets for a in range(3)), indexing="ij")
        r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
        expected[idx] = weight * np.mean(np.exp(-r2 / (2 * sigma**2))) / (2 * math.pi * sigma**2) ** 1.5
    peak = expected.max()
    # midpoint rule with h = voxel / 24: relative error about (h / sigma)^2 / 24 at the peak
    assert np.abs(volume - expected).max() < 2e-3 * peak
    assert volume.argmax() == expected.argmax()


def test_sum_along_z_is_the_projection_at_angle_zero():
    positions, sigmas, weights = _atoms(30, 2.5, seed=1)
    height, width, p = 24, 28, 0.25
    origin = (-width * p / 2, -height * p / 2, -9.0)  # atoms within 2.5 A: 8 widths inside in z
    identity, no_shift = torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 2, dtype=torch.float64)

    exact = voxelize(positions, sigmas, weights, origin, (width, height, 72), p, window=8.0).sum(2).T * p
    dense = project_isotropic_dense(positions, sigmas, weights, identity, no_shift, p, height, width)[0]
    assert torch.allclose(exact, dense, rtol=0, atol=1e-10 * float(dense.max()))

    windowed = voxelize(positions, sigmas, weights, origin, (width, height, 72), p).sum(2).T * p
    fast = project_isotropic(positions, sigmas, weights, identity, no_shift, p, height, width)[0]
    assert torch.allclose(windowed, fast, rtol=0, atol=2e-4 * float(fast.max()))


def test_sub_grid_and_thin_layer_equal_the_block_of_a_larger_grid():
    """Windows clamped at the grid's faces hold every in-grid value: a sub-grid (and a one-voxel
    layer, as the viewer's slice) reproduces the same voxels of a grid around it."""
    positions, sigmas, weights = _atoms(25, 3.0, seed=2)
    voxel, origin = 0.3, torch.tensor([-4.5, -4.2, -3.9], dtype=torch.float64)
    big = voxelize(positions, sigmas, weights, origin, (30, 28, 26), voxel)
    corner = origin + torch.tensor([7.0, 3.0, 11.0], dtype=torch.float64) * voxel
    part = voxelize(positions, sigmas, weights, corner, (12, 9, 5), voxel)
    assert torch.allclose(part, big[7:19, 3:12, 11:16], rtol=0, atol=1e-12)
    corner = origin + torch.tensor([0.0, 0.0, 13.0], dtype=torch.float64) * voxel
    layer = voxelize(positions, sigmas, weights, corner, (30, 28, 1), voxel)
    assert torch.allclose(layer[..., 0], big[..., 13], rtol=0, atol=1e-12)


def test_atoms_far_outside_the_grid_add_nothing():
    positions = torch.tensor([[50.0, 0.0, 0.0], [0.0, -40.0, 0.0]])
    volume = voxelize(positions, torch.tensor([0.5, 0.5]), torch.tensor([1.0, 1.0]), (-2.0, -2.0, -2.0), (8, 8, 8), 0.5)
    assert volume.shape == (8, 8, 8) and float(volume.abs().max()) == 0.0


def test_float32_and_empty_input():
    positions, sigmas, weights = (t.float() for t in _atoms(10, 1.5, seed=3))
    volume = voxelize(positions, sigmas, weights, (-6.0, -6.0, -6.0), (48, 48, 48), 0.25)
    assert volume.dtype == torch.float32
    assert float(volume.sum()) * 0.25**3 == pytest.approx(float(weights.sum()), rel=1e-3)
    empty = voxelize(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0), (0.0, 0.0, 0.0), (2, 3, 4), 1.0)
    assert empty.shape == (2, 3, 4) and float(empty.abs().sum()) == 0.0


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(2, 2), torch.ones(2), torch.ones(2), (0, 0, 0), (2, 2, 2), 1.0), "positions"),
        ((torch.zeros(2, 3), torch.ones(2), torch.ones(2), (0, 0, 0), (2, 0, 2), 1.0), "shape"),
        ((torch.zeros(2, 3), torch.ones(2), torch.ones(2), (0, 0, 0), (2, 2, 2), 0.0), "voxel"),
        ((torch.zeros(2, 3), torch.ones(2), torch.ones(2), (0, 0), (2, 2, 2), 1.0), "origin"),
        ((torch.zeros(2, 3), torch.tensor([1.0, 0.0]), torch.ones(2), (0, 0, 0), (2, 2, 2), 1.0), "widths"),
    ],
)
def test_bad_input_is_named(args, message):
    with pytest.raises(ValueError, match=message):
        voxelize(*args)
