"""Atoms across time, in pieces: the drift from projections and from matched atoms, linking frames
into trajectories and changes, the simulated changes of a time series, and the warm start's
initial atoms."""

import ase
import ase.io
import numpy as np
import pytest
import torch

from atomsplat.analysis.tracking import (
    displacement_significance,
    drift_from_atoms,
    drift_from_projections,
    link_frames,
)
from atomsplat.geometry import view_rotations
from atomsplat.model.cloud import AtomCloud, AtomShape
from atomsplat.model.init import read_initial_atoms, start_from_atoms
from atomsplat.render.projector import project_isotropic
from atomsplat.sim.structures import build_particle
from atomsplat.sim.timeseries import ID, evolve, with_ids


def _cluster(count=120, seed=0, spacing=2.6):
    """(count, 3) random points at least ``spacing`` A apart, A."""
    rng = np.random.default_rng(seed)
    points = []
    while len(points) < count:
        p = rng.uniform(-8, 8, 3)
        if all(np.linalg.norm(p - q) >= spacing for q in points):
            points.append(p)
    return np.array(points)


def test_drift_from_projections_recovers_a_translation():
    """Atoms projected at a known translation (with noise) give it back to 0.01 A: every view's
    shift to 1/20 pixel, the least-squares translation from all views."""
    atoms = _cluster(60, spacing=2.4)
    sigmas, weights = np.full(len(atoms), 0.55), np.full(len(atoms), 100.0)
    angles = np.arange(-60.0, 61.0, 10.0)
    drift = np.array([0.63, -0.41, 0.87])
    with torch.no_grad():
        measured = project_isotropic(
            torch.tensor(atoms + drift, dtype=torch.float32),
            torch.tensor(sigmas, dtype=torch.float32),
            torch.tensor(weights, dtype=torch.float32),
            torch.from_numpy(view_rotations(angles)).float(),
            torch.zeros(len(angles), 2),
            0.25,
            96,
            96,
        ).numpy()
    measured += np.random.default_rng(1).normal(0.0, 0.05 * measured.max(), measured.shape)
    found, residuals = drift_from_projections(atoms, sigmas, weights, measured, angles, 0.25)
    np.testing.assert_allclose(found, drift, atol=0.01)
    assert np.nanmax(residuals) < 0.03


def test_drift_from_atoms_ignores_atoms_that_moved_on_their_own():
    atoms = _cluster()
    drift = np.array([1.1, -0.7, 0.4])  # farther than the matching radius: the guess brings it in
    moved = atoms + drift + np.random.default_rng(2).normal(0.0, 0.02, atoms.shape)
    moved[:5] += [0.6, 0.0, 0.0]  # five atoms moved on their own
    found, error, used = drift_from_atoms(atoms, moved, guess=[1.0, -0.6, 0.3])
    np.testing.assert_allclose(found, drift, atol=0.01)
    assert used <= len(atoms) - 5 and np.all(error < 0.005)
    with pytest.raises(ValueError, match="only 0 atoms match"):
        drift_from_atoms(atoms, moved + 50.0)


def test_link_frames_reports_exactly_the_changes():
    """Three frames: atoms removed, added and displaced between them, the rest jittered by their
    stated uncertainty; every change is reported once and nothing else, ids follow the atoms."""
    rng = np.random.default_rng(3)
    first = _cluster(150)
    u = np.full_like(first, 0.02)
    second = np.delete(first, [4, 9], axis=0) + rng.normal(0.0, 0.02, (148, 3))  # two vanish
    second = np.vstack([second, [[11.0, 0.0, 0.0]]])  # one appears
    second[20] += [0.0, 0.5, 0.0]  # one moves: 0.5 A against 0.028 A of noise per axis
    third = second + rng.normal(0.0, 0.02, second.shape)
    third[30] += [0.0, 0.0, -0.4]
    frames = [first, second, third]
    uncertainties = [u, np.full_like(second, 0.02), np.full_like(third, 0.02)]
    linked = link_frames(frames, uncertainties, significance=5.0)
    summary = [(e.time, e.kind, e.track) for e in linked.events]
    moved_second, moved_third = linked.tracks[1][20], linked.tracks[2][30]
    assert summary == [(1, "vanished", 4), (1, "vanished", 9), (1, "appeared", 150), (1, "moved", moved_second)] + [
        (2, "moved", moved_third)
    ]
    moved = [e for e in linked.events if e.kind == "moved"]
    assert moved[0].distance == pytest.approx(0.5, abs=0.1) and moved[0].significance > 10
    np.testing.assert_array_equal(linked.tracks[0], np.arange(150))
    assert list(linked.tracks[1][:4]) == [0, 1, 2, 3] and linked.tracks[1][4] == 5  # atom 4 is gone
    assert np.isnan(linked.significance[1][-1])  # the new atom has no displacement


def test_significance_without_uncertainties_uses_the_spread_of_displacements():
    rng = np.random.default_rng(4)
    delta = rng.normal(0.0, 0.03, (500, 3))
    delta[0] = [0.5, 0.0, 0.0]
    z = displacement_significance(delta, None, None)
    assert z[0] > 10 and np.quantile(z[1:], 0.5) == pytest.approx(1.54, abs=0.2)  # chi, 3 d.o.f., median 1.54
    np.testing.assert_allclose(
        displacement_significance(delta[:3], np.full((3, 3), 0.03), np.zeros((3, 3))),
        np.linalg.norm(delta[:3], axis=1) / 0.03,
    )


def test_evolve_changes_what_it_says_and_keeps_ids():
    atoms = with_ids(build_particle("pd", "quick", 0))
    after, changes = evolve(atoms, np.random.default_rng(0), displaced=3, removed=2, added=2, displacement=0.8)
    ids_before, ids_after = atoms.arrays[ID], after.arrays[ID]
    assert len(after) == len(atoms) and set(ids_before) - set(ids_after) == set(changes.removed)
    assert set(ids_after) - set(ids_before) == set(changes.added)
    by_id = dict(zip(ids_after, after.positions))
    for i in ids_before:
        if i in changes.removed:
            continue
        distance = np.linalg.norm(by_id[i] - atoms.positions[i])
        assert distance == pytest.approx(0.8 if i in changes.displaced else 0.0, abs=1e-9)
    gaps = np.linalg.norm(after.positions[:, None] - after.positions[None], axis=2) + 9 * np.eye(len(after))
    assert gaps.min() >= 2.2 - 1e-9


def test_initial_atoms_from_a_file(tmp_path):
    atoms = ase.Atoms("Pt3", positions=[[0, 0, 0], [2.7, 0, 0], [0, 2.7, 0]])
    atoms.set_array("weight", np.array([10.0, 20.0, 30.0]))
    atoms.set_array("sigma", np.array([0.5, 0.6, 0.01]))  # the last below min_sigma: kept at it
    ase.io.write(tmp_path / "start.xyz", atoms, format="extxyz")
    found = read_initial_atoms(tmp_path / "start.xyz")
    np.testing.assert_allclose(found["positions"], atoms.positions)
    cloud = AtomCloud(torch.from_numpy(found["positions"]).float(), 0.6, 1.0, min_sigma=0.05)
    start_from_atoms(cloud, tmp_path / "start.xyz")
    np.testing.assert_allclose(cloud.weights.detach().numpy(), [10.0, 20.0, 30.0], rtol=1e-6)
    np.testing.assert_allclose(cloud.sigmas.detach().numpy(), [0.5, 0.6, 0.05], rtol=1e-6)

    atoms.info.update(halo_fraction=0.3, halo_ratio=1.8)  # atoms exported from a core+halo run
    ase.io.write(tmp_path / "halo.xyz", atoms, format="extxyz")
    np.testing.assert_allclose(read_initial_atoms(tmp_path / "halo.xyz")["halo"], [0.3, 1.8])
    cored = AtomCloud(torch.from_numpy(found["positions"]).float(), 0.6, 1.0, min_sigma=0.05, shape=AtomShape())
    start_from_atoms(cored, tmp_path / "halo.xyz")
    np.testing.assert_allclose(cored.halo(), [0.3, 1.8], rtol=1e-6)
    start_from_atoms(cloud, tmp_path / "halo.xyz")  # one Gaussian per atom: the halo does not apply
    assert cloud.halo() is None

    ase.io.write(tmp_path / "plain.xyz", ase.Atoms("Pt", positions=[[0, 0, 0]]), format="extxyz")
    assert set(read_initial_atoms(tmp_path / "plain.xyz")) == {"positions"}  # no weights: the model's own
    for path, message in [
        (None, "needs init_atoms"),
        (tmp_path / "missing.xyz", "missing.xyz: no such file"),
    ]:
        with pytest.raises(ValueError, match=message):
            read_initial_atoms(path)
    (tmp_path / "bad.xyz").write_text("not a number\n\n")
    with pytest.raises(ValueError, match="bad.xyz: not an extended XYZ"):
        read_initial_atoms(tmp_path / "bad.xyz")
