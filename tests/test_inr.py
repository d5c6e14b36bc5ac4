"""The implicit-neural-representation baseline: grid interpolation with a known answer, a fit of a
tiny few-atom series that reproduces the projections and traces back to the atoms, seeding, and
bad input."""

import numpy as np
import pytest
import torch

from atomsplat.analysis.baselines import reproject
from atomsplat.analysis.inr import GridField, fit_inr
from atomsplat.analysis.matching import evaluate
from atomsplat.analysis.tracing import trace_atoms
from atomsplat.geometry import view_rotations
from atomsplat.render.projector import project_isotropic

P, SIZE = 0.5, 24
ANGLES = np.arange(-90.0, 90.0, 4.0)
ATOMS = np.array([[1.3, -2.2, 1.6], [-2.4, 1.9, -0.7], [0.4, 2.6, 2.8], [-1.1, -1.5, -2.9]])
WEIGHTS = np.array([10.0, 7.0, 9.0, 6.0])


def series():
    out = project_isotropic(
        torch.from_numpy(ATOMS),
        torch.full((4,), 0.6, dtype=torch.float64),
        torch.from_numpy(WEIGHTS),
        torch.from_numpy(view_rotations(ANGLES)),
        torch.zeros(len(ANGLES), 2, dtype=torch.float64),
        P,
        SIZE,
        SIZE,
    )
    return out.numpy().astype(np.float32)


def test_grids_interpolate_a_linear_field_exactly_along_the_right_axes():
    field = GridField(half_extent=3.0, levels=3, features=3, base_resolution=2, finest_cell=0.5)
    with torch.no_grad():
        for grid, r in zip(field.grids, field.resolutions):
            vertex = torch.linspace(-3.0, 3.0, r + 1)
            # grid_sample layout (1, F, z, y, x): feature a holds coordinate a of the vertex.
            grid[0, 0] = vertex[None, None, :]
            grid[0, 1] = vertex[None, :, None]
            grid[0, 2] = vertex[:, None, None]
    points = torch.tensor([[0.3, -1.7, 2.2], [-2.9, 0.05, -1.1]])
    features = field.encode(points).reshape(2, 3, 3)  # (points, levels, features)
    torch.testing.assert_close(features, points[:, None, :].expand(-1, 3, -1))
    density = field(points)
    assert density.shape == (2,) and torch.all(density > 0)


def test_fit_reproduces_the_projections_and_traces_the_atoms():
    data = series()
    result = fit_inr(data, ANGLES, P, steps=150, slices_per_step=6, seed=0, progress=False)
    assert result.volume.shape == (SIZE, SIZE, SIZE)
    assert result.losses[-1] < 0.01 * result.losses[0]
    again = reproject(result.volume, ANGLES, P)
    assert np.abs(again - data).sum() / np.abs(data).sum() < 0.12
    report = evaluate(trace_atoms(result.volume, P, threshold=0.3).positions, ATOMS, max_distance=0.25)
    assert (report.tpr, report.fpr) == (1.0, 0.0), report.summary()


def test_seed_makes_training_repeatable():
    data = series()
    first = fit_inr(data, ANGLES, P, steps=3, seed=4, progress=False)
    second = fit_inr(data, ANGLES, P, steps=3, seed=4, progress=False)
    assert first.losses == second.losses
    np.testing.assert_array_equal(first.volume, second.volume)


def test_bad_input_is_refused():
    data = series()
    with pytest.raises(ValueError, match="steps"):
        fit_inr(data, ANGLES, P, steps=-1)
    with pytest.raises(ValueError, match="slices_per_step"):
        fit_inr(data, ANGLES, P, slices_per_step=SIZE + 1)
    with pytest.raises(ValueError, match="tilt angles"):
        fit_inr(data, ANGLES[:-2], P)
    with pytest.raises(ValueError, match="positive"):
        GridField(half_extent=0.0)
