"""The particle builders: closest approach, counts, composition, centring, seeds, and the registry."""

from collections import Counter

import numpy as np
import pytest
from scipy.spatial import cKDTree

from atomsplat.sim.structures import (
    AU_LATTICE,
    AU_XYZ,
    FEPT_A,
    FEPT_C,
    PARTICLES,
    SI_DENSITY,
    SIO2_DENSITY,
    amorphous_copdpt,
    amorphous_hea,
    amorphous_particle,
    amorphous_pd,
    amorphous_si,
    amorphous_sigesn,
    amorphous_sio2,
    au_particle,
    build_particle,
    fcc_sphere,
    fept_particle,
    random_mixed_packing,
    random_packing,
    zrte_nanotube,
)


def _closest(positions):
    return float(cKDTree(positions).query(positions, k=2)[0][:, 1].min())


def _assert_centred(atoms):
    p = atoms.positions
    np.testing.assert_allclose((p.min(axis=0) + p.max(axis=0)) / 2.0, 0.0, atol=1e-9)
    assert atoms.cell.rank == 0 and not atoms.pbc.any()


def test_fept_grains_keep_their_distance_and_composition():
    atoms = fept_particle(radius=9.0, n_grains=3, min_distance=2.0, seed=1)
    _assert_centred(atoms)
    assert _closest(atoms.positions) > 2.0
    count = Counter(atoms.get_chemical_symbols())
    assert set(count) == {"Fe", "Pt"}
    assert abs(count["Fe"] - count["Pt"]) < 0.1 * len(atoms)
    # L1_0 holds 4 atoms per a^2 c; the boundaries lose a few.
    expected = 4.0 / (FEPT_A**2 * FEPT_C) * 4.0 / 3.0 * np.pi * 9.0**3
    assert 0.85 * expected < len(atoms) <= 1.05 * expected
    assert set(np.unique(atoms.arrays["grain"])) <= {0, 1, 2}
    assert np.linalg.norm(atoms.positions, axis=1).max() <= 2 * 9.0


def test_fept_single_grain_is_ordered_l10():
    """Inside an L1_0 grain an Fe has 8 Pt neighbours at sqrt(a^2/4 + c^2/4) = 2.673 A (the
    adjacent Pt planes) and 4 Fe at a / sqrt(2) = 2.722 A (its own plane)."""
    atoms = fept_particle(radius=9.0, n_grains=1, seed=3)
    p, symbols = atoms.positions, np.array(atoms.get_chemical_symbols())
    interior = np.flatnonzero((np.linalg.norm(p - p.mean(axis=0), axis=1) < 5.0) & (symbols == "Fe"))
    assert len(interior) > 5
    tree = cKDTree(p)
    fe_pt = np.hypot(FEPT_A / 2, FEPT_C / 2)
    for i in interior:
        near = [j for j in tree.query_ball_point(p[i], 2.9) if j != i]
        d = np.linalg.norm(p[near] - p[i], axis=1)
        assert sorted(symbols[near]) == ["Fe"] * 4 + ["Pt"] * 8
        np.testing.assert_allclose(d[symbols[near] == "Pt"], fe_pt, atol=1e-9)
        np.testing.assert_allclose(d[symbols[near] == "Fe"], FEPT_A / np.sqrt(2), atol=1e-9)


def test_seeds_reproduce_and_differ():
    a, b, c = (fept_particle(radius=7.0, n_grains=2, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.get_chemical_symbols() == b.get_chemical_symbols()
    assert len(a) != len(c) or not np.allclose(a.positions, c.positions)
    p, q = amorphous_hea(6.0, seed=2), amorphous_hea(6.0, seed=2)
    np.testing.assert_array_equal(p.positions, q.positions)
    assert p.get_chemical_symbols() == q.get_chemical_symbols()


def test_random_packing_reaches_density_and_distance():
    radius, density, distance = 9.0, 0.0635, 2.45
    positions = random_packing(radius, density, distance, np.random.default_rng(0))
    assert _closest(positions) >= distance
    assert np.linalg.norm(positions, axis=1).max() <= radius
    # A sphere cut from a uniform periodic packing: about density * volume atoms.
    assert len(positions) == pytest.approx(density * 4.0 / 3.0 * np.pi * radius**3, rel=0.1)


def test_random_packing_refuses_an_impossible_density():
    with pytest.raises(RuntimeError, match="too high"):
        random_packing(4.0, 0.2, 2.45, np.random.default_rng(0), max_iterations=20)


def test_amorphous_pd_and_hea():
    pd = amorphous_pd(7.0, seed=0)
    _assert_centred(pd)
    assert set(pd.get_chemical_symbols()) == {"Pd"}
    assert _closest(pd.positions) >= 2.45
    hea = amorphous_hea(7.0, seed=1)
    _assert_centred(hea)
    assert _closest(hea.positions) >= 2.45
    counts = Counter(hea.get_chemical_symbols())
    assert set(counts) == {"Ni", "Pd", "Pt"}
    assert max(counts.values()) - min(counts.values()) <= 1
    # Mixed at random, not in blocks: each species spread over the particle.
    for symbol in counts:
        mine = hea.positions[np.array(hea.get_chemical_symbols()) == symbol]
        assert np.linalg.norm(mine.mean(axis=0)) < 2.0


def _interior_density(atoms, radius, depth=3.0):
    """Atoms per A^3 in the sphere ``depth`` A inside the surface of a particle of ``radius``."""
    inner = radius - depth
    return np.sum(np.linalg.norm(atoms.positions, axis=1) <= inner) / (4.0 / 3.0 * np.pi * inner**3)


def test_amorphous_si_count_density_and_distance():
    """A 2 nm a-Si sphere holds about 0.0499 * 4,189 = 209 atoms (seeds 0-5 gave 197 to 223), the
    interior of a 20 A one the bulk density (seeds 0-3: within 3 %), no pair closer than 2.2 A."""
    small = amorphous_si(10.0, seed=0)
    _assert_centred(small)
    assert set(small.get_chemical_symbols()) == {"Si"}
    assert len(small) == pytest.approx(SI_DENSITY * 4.0 / 3.0 * np.pi * 10.0**3, rel=0.1)
    assert _closest(small.positions) >= 2.2
    assert _interior_density(amorphous_si(20.0, seed=1), 20.0) == pytest.approx(SI_DENSITY, rel=0.05)


def _closest_by_pair(atoms):
    """{(a, b): shortest distance between an atom of a and one of b}, symbols sorted within a pair."""
    symbols = np.array(atoms.get_chemical_symbols())
    out = {}
    for a in np.unique(symbols):
        for b in np.unique(symbols):
            if a <= b:
                pa, pb = atoms.positions[symbols == a], atoms.positions[symbols == b]
                d = cKDTree(pb).query(pa, k=2 if a == b else 1)[0]
                out[(a, b)] = float((d[:, 1] if a == b else d).min())
    return out


def test_amorphous_sio2_is_stoichiometric_with_its_pair_distances():
    """SiO2 at 2.2 g / cm^3: round(0.0662 * 4,189) = 277 atoms in a 10 A sphere, two O per Si up to
    one atom, each species within 1 A of the radius (seeds 0-3: 0.7 A); each pair of species no
    closer than its own closest approach; the interior of a 20 A sphere at the bulk density
    (seeds 0-3: within 3 %)."""
    assert SIO2_DENSITY == pytest.approx(0.06615, abs=1e-4)
    atoms = amorphous_sio2(10.0, seed=0)
    _assert_centred(atoms)
    counts = Counter(atoms.get_chemical_symbols())
    assert len(atoms) == 277 and abs(counts["O"] - 2 * counts["Si"]) <= 1
    symbols, distance = np.array(atoms.get_chemical_symbols()), np.linalg.norm(atoms.positions, axis=1)
    assert all(abs(distance[symbols == s].max() - 10.0) < 1.0 for s in ("Si", "O"))
    closest = _closest_by_pair(atoms)
    assert closest[("O", "Si")] >= 1.55 and closest[("O", "O")] >= 2.4 and closest[("Si", "Si")] >= 2.9
    # Non-additive contacts: Si-O pairs do come near their 1.55 A, far below (2.4 + 2.9) / 2.
    assert closest[("O", "Si")] < 2.0
    assert _interior_density(amorphous_sio2(20.0, seed=1), 20.0) == pytest.approx(SIO2_DENSITY, rel=0.05)


def test_mixtures_have_their_fractions():
    """Mixtures hold each species within one atom of N times its fraction: by assignment after
    the packing (one closest approach, CoPdPt), or by taking each species' innermost atoms of the
    packing (one closest approach per pair, SiGeSn)."""
    fractions = np.array([0.5, 0.3, 0.2])
    for atoms, elements in (
        (amorphous_copdpt(10.0, fractions=fractions, seed=2), ["Co", "Pd", "Pt"]),
        (amorphous_sigesn(10.0, fractions=fractions, seed=2), ["Si", "Ge", "Sn"]),
    ):
        _assert_centred(atoms)
        counts = Counter(atoms.get_chemical_symbols())
        assert set(counts) == set(elements)
        assert np.all(np.abs(np.array([counts[e] for e in elements]) - len(atoms) * fractions) <= 1.0)
    sigesn = amorphous_sigesn(10.0, seed=0)
    closest = _closest_by_pair(sigesn)
    assert closest[("Si", "Si")] >= 2.2 and closest[("Ge", "Ge")] >= 2.29 and closest[("Sn", "Sn")] >= 2.63
    assert amorphous_copdpt(8.0, seed=1).get_chemical_symbols() == amorphous_copdpt(8.0, seed=1).get_chemical_symbols()


def test_mixed_packing_is_reproducible_and_checks_its_input():
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    distances = [[2.9, 1.55], [1.55, 2.4]]
    a, la = random_mixed_packing(8.0, SIO2_DENSITY, [1, 2], distances, rng())
    b, lb = random_mixed_packing(8.0, SIO2_DENSITY, [1, 2], distances, rng())
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert (
        len(a) == round(SIO2_DENSITY * 4.0 / 3.0 * np.pi * 8.0**3) and abs(2 * np.sum(la == 0) - np.sum(la == 1)) <= 1
    )
    with pytest.raises(ValueError, match="symmetric"):
        random_mixed_packing(8.0, 0.05, [1, 2], [[2.9, 1.5], [1.6, 2.4]], rng())
    with pytest.raises(ValueError, match="fractions"):
        random_mixed_packing(8.0, 0.05, [1, -1], distances, rng())
    with pytest.raises(ValueError, match=r"\('O', 'O'\)"):
        amorphous_particle(["Si", "O"], 8.0, 0.05, {("Si", "O"): 1.55, ("Si", "Si"): 2.9})
    with pytest.raises(ValueError, match="one proportion"):
        amorphous_particle(["Si", "Ge"], 8.0, 0.05, 2.2, fractions=[1.0, 2.0, 3.0])


def test_nanotube_walls_and_filling():
    atoms = zrte_nanotube(length=30.0)
    _assert_centred(atoms)
    symbols = np.array(atoms.get_chemical_symbols())
    counts = Counter(symbols)
    assert set(counts) == {"C", "Zr", "Te"}
    assert counts["Te"] == 3 * (counts["Zr"] + 1)
    carbon, filling = atoms.positions[symbols == "C"], atoms.positions[symbols != "C"]
    assert _closest(carbon) == pytest.approx(1.42, abs=0.01)  # the C-C bond
    # Axis along x: carbon sits at two radii about x, about 3.4 A apart.
    radii = np.hypot(carbon[:, 1], carbon[:, 2])
    inner, outer = np.sort(np.unique(np.round(radii, 2)))[[0, -1]]
    assert outer - inner == pytest.approx(3.4, abs=0.1)
    assert np.all((np.abs(radii - inner) < 0.05) | (np.abs(radii - outer) < 0.05))
    assert np.ptp(atoms.positions[:, 0]) == pytest.approx(30.0, abs=2.5)
    assert np.ptp(atoms.positions[:, 1]) == pytest.approx(2 * outer, abs=0.1)
    # The chain stays on the axis and 2.5 A clear of the inner wall.
    assert cKDTree(carbon).query(filling)[0].min() >= 2.5
    assert np.hypot(filling[:, 1], filling[:, 2]).max() < inner - 2.5


def test_nanotube_refuses_walls_too_close():
    with pytest.raises(ValueError, match="apart"):
        zrte_nanotube(length=10.0, inner=8, outer=10)
    with pytest.raises(ValueError, match="wall"):
        zrte_nanotube(length=10.0, inner=5, outer=10)


def test_fcc_sphere_has_gold_neighbours_and_density():
    atoms = fcc_sphere(12.0)
    _assert_centred(atoms)
    distances = cKDTree(atoms.positions).query(atoms.positions, k=13)[0][:, 1:]
    np.testing.assert_allclose(distances.min(), AU_LATTICE / np.sqrt(2.0), rtol=1e-9)
    # An interior atom has the twelve FCC neighbours at a / sqrt(2).
    centre = int(np.argmin(np.linalg.norm(atoms.positions, axis=1)))
    np.testing.assert_allclose(distances[centre], AU_LATTICE / np.sqrt(2.0), rtol=1e-9)
    expected = 4.0 / AU_LATTICE**3 * 4.0 / 3.0 * np.pi * 12.0**3
    assert abs(len(atoms) - expected) < 0.05 * expected
    assert set(atoms.get_chemical_symbols()) == {"Au"}


def test_au_particle_file_missing_is_named(tmp_path):
    missing = tmp_path / "Au_NP.xyz"
    with pytest.raises(FileNotFoundError, match="Au_NP.xyz"):
        au_particle(path=missing)


@pytest.mark.skipif(not AU_XYZ.is_file(), reason=f"{AU_XYZ} is not on this machine")
def test_au_particle_is_centred_on_its_box():
    full = au_particle()
    assert len(full) == 6679
    _assert_centred(full)
    small = au_particle(radius=8.0)
    assert 0 < len(small) < 300 and _closest(small.positions) > 2.8


@pytest.mark.parametrize("name", sorted(PARTICLES))
def test_registry_builds_quick_particles(name):
    if name == "au" and not AU_XYZ.is_file():
        pytest.skip(f"{AU_XYZ} is not on this machine")
    atoms = build_particle(name, "quick", seed=0)
    _assert_centred(atoms)
    assert 100 < len(atoms) < 1000
    assert set(atoms.get_chemical_symbols()) == set(PARTICLES[name].elements)
    assert _closest(atoms.positions) > {"nanotube": 1.4, "sio2": 1.5}.get(name, 2.0)  # C-C 1.42, Si-O 1.55 A


def test_registry_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown particle"):
        build_particle("ag")
    with pytest.raises(ValueError, match="unknown size"):
        build_particle("pd", "huge")
