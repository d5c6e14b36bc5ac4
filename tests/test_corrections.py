"""Per-projection corrections: the shift gauge and the polynomial background."""

import numpy as np
import pytest
import torch

from atomsplat.geometry import view_rotations
from atomsplat.model.corrections import (
    atom_scales,
    background,
    background_basis,
    border_background,
    gauge_basis,
    remove_gauge,
    shift_error,
)
from atomsplat.model.losses import NoiseModel
from atomsplat.render.projector import project_isotropic


def _rotations(angles=np.arange(-60, 61, 10), axis=0.0):
    return torch.from_numpy(view_rotations(angles, axis)).float()


@pytest.mark.parametrize("axis", [0.0, 27.0])
def test_gauge_basis_is_orthonormal_and_spans_rigid_translations(axis):
    rotations = _rotations(axis=axis)
    basis = gauge_basis(rotations)
    assert basis.shape == (2 * len(rotations), 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)
    t = torch.tensor([0.3, -0.7, 1.1])
    pattern = (rotations @ t)[:, :2]  # shifts that moving the sample by t makes
    assert remove_gauge(pattern, basis).abs().max() < 1e-5
    assert remove_gauge(pattern + 0.0, basis).shape == pattern.shape


def test_remove_gauge_keeps_what_no_translation_explains_and_is_a_projection():
    rotations = _rotations()
    basis = gauge_basis(rotations)
    shifts = torch.randn(len(rotations), 2, generator=torch.Generator().manual_seed(0))
    once = remove_gauge(shifts, basis)
    torch.testing.assert_close(remove_gauge(once, basis), once, atol=1e-5, rtol=0)
    assert (basis.T @ once.reshape(-1)).abs().max() < 1e-5
    # a constant y shift over -60..60 degrees is not a rigid motion: a translation along y
    # makes y shifts of cos(theta), which explain most but not all of it
    constant_y = torch.zeros(len(rotations), 2)
    constant_y[:, 1] = 1.0
    assert remove_gauge(constant_y, basis).norm() > 0.15 * constant_y.norm()


def test_shift_error_ignores_a_rigid_translation():
    rotations = _rotations()
    basis = gauge_basis(rotations)
    true = torch.randn(len(rotations), 2, generator=torch.Generator().manual_seed(2))
    translated = true + (rotations @ torch.tensor([0.5, -0.2, 0.3]))[:, :2]
    assert shift_error(translated, true, basis) < 1e-5
    off = true.clone()
    off[0, 0] += 1.0  # one projection off by 1 A: most of it is no rigid motion
    assert 0.1 < shift_error(off, true, basis) <= 1.0 / len(rotations) ** 0.5 + 1e-6


def test_translating_the_sample_equals_shifting_the_projections():
    """The physics behind the gauge: projections of atoms moved by t are the projections of the
    original atoms with detector offsets (M_k t)[:2]."""
    g = torch.Generator().manual_seed(1)
    positions = torch.randn(6, 3, generator=g) * 3.0
    sigmas, weights = torch.full((6,), 0.6), torch.rand(6, generator=g) + 0.5
    rotations = _rotations(np.array([-50.0, 0.0, 35.0]), axis=15.0)
    t = torch.tensor([0.4, -0.9, 0.6])
    zero = torch.zeros(3, 2)
    moved = project_isotropic(positions + t, sigmas, weights, rotations, zero, 0.25, 64, 64)
    shifted = project_isotropic(positions, sigmas, weights, rotations, (rotations @ t)[:, :2], 0.25, 64, 64)
    torch.testing.assert_close(moved, shifted, atol=1e-4 * float(moved.max()), rtol=0)


def test_background_basis_monomials():
    basis = background_basis(4, 6, 1)
    assert basis.shape == (3, 4, 6)
    assert torch.all(basis[0] == 1.0)
    u = (torch.arange(6) + 0.5) / 6 * 2 - 1
    v = (torch.arange(4) + 0.5) / 4 * 2 - 1
    torch.testing.assert_close(basis[1], u[None, :].expand(4, 6))
    torch.testing.assert_close(basis[2], v[:, None].expand(4, 6))
    assert background_basis(5, 5, 2).shape == (6, 5, 5)
    with pytest.raises(ValueError, match="degree"):
        background_basis(4, 4, -1)


def test_border_background_recovers_a_plane_under_a_particle():
    basis = background_basis(40, 50, 1)
    coefficients = torch.tensor([[2.0, 0.5, -0.3], [1.0, -0.2, 0.1]])
    planes = background(coefficients, basis)
    y, x = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    particle = 10.0 * torch.exp(-((x - 25) ** 2 + (y - 20) ** 2) / 30.0)  # inside the frame, ~0 on it
    fitted = border_background(planes + particle, basis)
    torch.testing.assert_close(fitted, coefficients, atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["poisson", "l2"])
def test_atom_scales_find_a_dose_factor_to_their_deviation(kind):
    """200 views of one Gaussian spot (peak 8 counts) on a pedestal of 1, the atoms at 0.8 of the
    model's: the factors scatter about 0.8 as their deviations say (counts: Poisson; "l2": Gaussian
    noise of 0.5). Over 4 seeds the mean was within 0.009 of 0.8 (its standard error 0.0054 for
    counts) and the spread over the deviation 0.94-1.06 (Poisson) and 0.955-1.009 (l2); the bounds
    are 4 and 3 standard errors."""
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    spot = 8.0 * torch.exp(-((x - 11.5) ** 2 + (y - 12.0) ** 2) / (2 * 2.0**2))
    atoms, background = spot.expand(200, 24, 24), torch.ones(200, 24, 24)
    mean = 0.8 * atoms + background
    if kind == "poisson":
        measured, noise = torch.poisson(mean, generator=g), NoiseModel("poisson", 1e-3)
    else:
        measured, noise = mean + 0.5 * torch.randn(mean.shape, generator=g), NoiseModel("l2", 1e-3)
    scales, deviations = atom_scales(atoms, background, measured, noise)
    assert abs(float(scales.mean()) - 0.8) < 0.022
    assert 0.85 < float(scales.std() / deviations.mean()) < 1.15
