"""Seeded builders of the paper's test particles, and a registry of them by name.

The paper (DESIGN.md, "Particles") reconstructs five simulated structures: the Au particle of its
public repository (FCC with stacking faults and twins, 6,679 atoms), FePt with grain boundaries,
amorphous Pd, an amorphous Ni-Pd-Pt high-entropy alloy and, in the ablation, a double-wall carbon
nanotube holding Zr-Te. Besides Au, whose file the paper ships, it does not publish these
structures; the builders here make particles of the same kinds and of comparable size (thousands
of atoms) from documented recipes, reproducible from a seed. For the low-dose regime (DESIGN.md,
"Real data: the low-dose regime") they also build amorphous Si, SiO2 and mixtures (Si-Ge-Sn,
Co-Pd-Pt) of any size.

Every builder returns an ``ase.Atoms`` in A whose bounding box is centred at the origin and that
has no cell (so :func:`atomsplat.sim.simulate.center_structure` leaves it where it is): it is
already in the sample frame, origin at the rotation centre. ``PARTICLES`` names them for the
benchmark; :func:`build_particle` builds one by name at a "quick" (hundreds of atoms, for CI; for
the low-dose particles the 2 nm sphere) or "full" (thousands, as in the paper) size, the FCC Au
sphere also at "large" (100,000 atoms) and amorphous Si at "large" (the 9 nm sphere, 19,000).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ase.io
import numpy as np
from ase import Atoms
from ase.build import nanotube
from ase.data import atomic_masses
from ase.units import mol
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

# The Au particle of the paper's public repository; it is not part of this package.
AU_XYZ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "Au_NP.xyz"

# L1_0 FePt (A): tetragonal, Fe and Pt in alternating (001) planes.
FEPT_A, FEPT_C = 3.85, 3.71
# Fractional positions in the conventional cell: Fe in the z = 0 plane, Pt in the z = 1/2 plane.
_FEPT_BASIS = (("Fe", (0.0, 0.0, 0.0)), ("Fe", (0.5, 0.5, 0.0)), ("Pt", (0.5, 0.0, 0.5)), ("Pt", (0.0, 0.5, 0.5)))

# Amorphous Pd: number density (atoms / A^3) and closest approach (A). Crystalline Pd holds
# 4 / 3.89^3 = 0.068 atoms / A^3 with neighbours at 2.75 A; the amorphous solid is a few percent
# less dense, and its shortest pairs come about 10 % closer than the crystal's neighbours.
PD_DENSITY, PD_MIN_DISTANCE = 0.0635, 2.45

# Amorphous Si: number density (atoms / A^3) of crystalline Si (8 / 5.431^3; a-Si is within 2 % of
# it) and closest approach (A), a little under the 2.35 A Si-Si bond, as the shortest a-Si pairs are.
SI_DENSITY, SI_MIN_DISTANCE = 0.0499, 2.2

# Amorphous SiO2 (fused silica): 2.2 g / cm^3, so 3 * 2.2 / 60.08 g/mol * N_A = 0.0662 atoms / A^3, a
# third of them Si; closest approaches (A) of each pair of species, a little under the Si-O bond
# (1.61 A), the O-O edge of an SiO4 tetrahedron (2.63 A) and the Si-Si distance across an Si-O-Si
# bridge (3.1 A).
SIO2_MASS_DENSITY = 2.2  # g / cm^3
SIO2_DENSITY = 3.0 * SIO2_MASS_DENSITY / (atomic_masses[14] + 2.0 * atomic_masses[8]) * mol * 1e-24
SIO2_MIN_DISTANCES = {("Si", "O"): 1.55, ("O", "O"): 2.4, ("Si", "Si"): 2.9}

# Lattice constants (A) of the diamond-structure crystals of Si, Ge and alpha-Sn: atomic volume
# a^3 / 8, nearest-neighbour bond a * sqrt(3) / 4 (2.352, 2.450, 2.810 A).
DIAMOND_LATTICE = {"Si": 5.431, "Ge": 5.658, "Sn": 6.489}

# ZrTe3 chain (A): period along the chain (the b axis of ZrTe3) and Zr-Te bond length.
ZRTE3_PERIOD, ZRTE_BOND = 3.93, 2.95
GRAPHITE_SPACING = 3.4  # A, between the walls of a multi-wall nanotube

AU_LATTICE = 4.078  # A, FCC gold at room temperature


def _centred(atoms: Atoms) -> Atoms:
    """``atoms`` moved so that their bounding box is centred at the origin, with no cell."""
    atoms.positions -= (atoms.positions.min(axis=0) + atoms.positions.max(axis=0)) / 2.0
    atoms.cell = np.zeros((3, 3))
    atoms.pbc = False
    return atoms


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def au_particle(radius: float | None = None, path: Path | str = AU_XYZ) -> Atoms:
    """The paper's Au particle (6,679 atoms, FCC with stacking faults and twins), or a sphere of it.

    The file (extended XYZ from the paper's public repository) puts the particle in a 70 A box;
    its atoms are moved so that the box centre is the origin (the centre the authors chose) and
    the box is dropped. With ``radius`` only the atoms within ``radius`` A of that centre are kept:
    a small particle with the same faults, for tests.

    Args:
        radius: keep the atoms within this distance of the centre, A; None keeps all.
        path: the XYZ file; by default ``shared/data/Au_NP.xyz`` beside the repository.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the Au particle file is missing; it is Au_NP.xyz from the paper's public "
            "repository (6,679 atoms in a 70 A box): pass its path"
        )
    atoms = ase.io.read(path)
    if atoms.cell.rank != 3:
        raise ValueError(f"{path}: expected the particle in a box (a 3-D cell), found none")
    atoms.positions -= atoms.cell.array.sum(axis=0) / 2.0
    if radius is not None:
        _check_positive(radius=radius)
        atoms = atoms[np.linalg.norm(atoms.positions, axis=1) <= radius]
        if len(atoms) == 0:
            raise ValueError(f"{path}: no atom lies within {radius} A of the centre")
    return _centred(atoms)


def fcc_sphere(radius: float, element: str = "Au", lattice_constant: float = AU_LATTICE) -> Atoms:
    """A perfect FCC crystal cut to a sphere of ``radius`` A about a lattice point: a particle of
    any size, for scale tests (Au: 0.059 atoms / A^3, so 74 A holds about 100,000 atoms).

    The cube axes are the sample axes, so the 0 degree view looks down [001].
    """
    _check_positive(radius=radius, lattice_constant=lattice_constant)
    n = math.ceil(radius / lattice_constant)
    cells = np.arange(-n, n + 1)
    corners = np.stack(np.meshgrid(cells, cells, cells, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    basis = np.array([(0.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)])
    positions = ((corners + basis) * lattice_constant).reshape(-1, 3)
    positions = positions[np.linalg.norm(positions, axis=1) <= radius]
    return _centred(Atoms(symbols=[element] * len(positions), positions=positions))


def _random_rotations(n: int, rng: np.random.Generator) -> Rotation:
    """``n`` rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    return Rotation.from_quat(rng.normal(size=(n, 4)))


def _remove_close_pairs(positions: np.ndarray, min_distance: float, priority: np.ndarray) -> np.ndarray:
    """Mask (N,) of the atoms to keep so that no two kept atoms are closer than ``min_distance``.

    Pairs are visited shortest first; of a pair where both are still kept, the atom of larger
    ``priority`` (N,) is removed. Every close pair loses an atom, so the result is free of them.
    """
    keep = np.ones(len(positions), bool)
    pairs = cKDTree(positions).query_pairs(min_distance, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    lengths = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    for i, j in pairs[np.argsort(lengths, kind="stable")]:
        if keep[i] and keep[j]:
            keep[j if priority[j] > priority[i] else i] = False
    return keep


def fept_particle(radius: float = 26.0, n_grains: int = 5, min_distance: float = 2.0, seed: int = 0) -> Atoms:
    """A spherical FePt particle of ordered L1_0 grains meeting at grain boundaries.

    The paper reconstructs an FePt particle with grain boundaries; the experimental particle of
    that kind (Yang et al., Nature 2017) holds several L1_0 grains with disordered boundaries.
    Here: ``n_grains`` seed points uniform in the sphere of ``radius`` split it into Voronoi cells;
    each cell is filled with an L1_0 lattice (a = 3.85 A, c = 3.71 A, Fe and Pt in alternating
    (001) planes) of a uniformly random orientation and random offset; where grains meet, of every
    pair of atoms closer than ``min_distance`` the one farther from its own grain's seed point is
    removed (shortest pairs first). Inside a grain the closest pairs are Fe-Pt at 2.67 A.

    Args:
        radius: particle radius, A (26 A: about 5,000 atoms; 10 A: about 300).
        n_grains: number of grains (Voronoi cells).
        min_distance: closest approach allowed across a grain boundary, A.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        Atoms of Fe and Pt, bounding box centred at the origin; ``atoms.arrays["grain"]`` holds
        each atom's grain index.
    """
    _check_positive(radius=radius, n_grains=n_grains, min_distance=min_distance)
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n_grains, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    seeds = direction * radius * rng.random(n_grains)[:, None] ** (1.0 / 3.0)
    rotations = _random_rotations(n_grains, rng)
    offsets = rng.random((n_grains, 3)) * (FEPT_A, FEPT_A, FEPT_C)

    # Lattice points of a block about the particle centre that covers the sphere in any orientation.
    reach = radius + FEPT_A
    cells = [np.arange(-math.ceil(reach / step), math.ceil(reach / step) + 1) for step in (FEPT_A, FEPT_A, FEPT_C)]
    corners = np.stack(np.meshgrid(*cells, indexing="ij"), axis=-1).reshape(-1, 1, 3)
    basis = np.array([frac for _, frac in _FEPT_BASIS])
    lattice = ((corners + basis) * (FEPT_A, FEPT_A, FEPT_C)).reshape(-1, 3)
    symbols = np.tile([symbol for symbol, _ in _FEPT_BASIS], len(corners))

    seed_tree = cKDTree(seeds)
    parts, part_symbols, part_grains = [], [], []
    for g in range(n_grains):
        positions = rotations[g].apply(lattice + offsets[g])
        inside = np.linalg.norm(positions, axis=1) <= radius
        inside[inside] = seed_tree.query(positions[inside])[1] == g  # this grain's Voronoi cell
        parts.append(positions[inside])
        part_symbols.append(symbols[inside])
        part_grains.append(np.full(int(inside.sum()), g))
    positions, symbols, grains = np.concatenate(parts), np.concatenate(part_symbols), np.concatenate(part_grains)

    keep = _remove_close_pairs(positions, min_distance, np.linalg.norm(positions - seeds[grains], axis=1))
    atoms = Atoms(symbols=list(symbols[keep]), positions=positions[keep])
    atoms.arrays["grain"] = grains[keep]
    return _centred(atoms)


def random_packing(
    radius: float, density: float, min_distance: float, rng: np.random.Generator, max_iterations: int = 10_000
) -> np.ndarray:
    """Positions (N, 3) in A of a dense random packing cut to a sphere: an amorphous particle.

    Random sequential addition stalls near a packing fraction of 0.38, below that of amorphous
    metals (0.0635 atoms / A^3 with spheres of 2.45 A is 0.49), so the packing is made by relaxing
    random points instead: ``density * L^3`` points uniform in a periodic cube of side
    ``L = 2 * (radius + min_distance)`` are pushed apart, every pair closer than
    ``1.02 * min_distance`` by half its overlap each (minimum images, KD-tree pair search), until
    no pair is closer than ``min_distance``; then the sphere of ``radius`` about the cube's centre
    is cut out. The interior keeps the bulk density and the surface is a plain cut, with no pile-up
    at a wall. Amorphous Si at 45 A (0.0499 / A^3, 2.2 A: 19,000 atoms) takes 3 to 4 s on one core.

    Args:
        radius: particle radius, A.
        density: number density of the packing, atoms / A^3 (below about 0.6 / min_distance^3).
        min_distance: closest approach, A.
        rng: the random generator.
        max_iterations: relaxation sweeps before giving up with an error.
    """
    _check_positive(radius=radius, density=density, min_distance=min_distance)
    side = 2.0 * (radius + min_distance)
    positions = rng.random((int(round(density * side**3)), 3)) * side
    labels = np.zeros(len(positions), dtype=int)
    positions = _relax_packing(positions, labels, np.array([[float(min_distance)]]), side, max_iterations, density)
    positions -= side / 2.0
    return positions[np.linalg.norm(positions, axis=1) <= radius]


def random_mixed_packing(
    radius: float,
    density: float,
    fractions,
    min_distances,
    rng: np.random.Generator,
    max_iterations: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """A random packing of several species with a closest approach for each pair of species.

    As :func:`random_packing`, with species: the ``density * L^3`` points of the periodic cube get
    species in the proportions ``fractions`` (counts by :func:`_apportion`, in random order)
    before the relaxation, which pushes apart every pair closer than 1.02 times its own closest
    approach ``min_distances[s, t]`` until none is closer than that. A sphere cut out of the cube
    would hold each species in its proportion only on average (a 10 A SiO2 sphere: about 92 +- 8
    Si), so the particle is instead the ``M = round(density * 4/3 pi radius^3)`` atoms made of the
    ``M f_s`` atoms of each species s nearest the centre: its composition is exact up to rounding
    and each species fills a sphere whose radius differs from ``radius`` by a fraction of an A.
    The distances need not be additive (SiO2's Si-O is far shorter than the mean of Si-Si and
    O-O): this is a packing of hard spheres with pair-dependent contact distances, not a
    chemically bonded network.

    Args:
        radius: particle radius, A.
        density: total number density, atoms / A^3.
        fractions: (S,) proportions of the species (normalised here).
        min_distances: (S, S) symmetric closest approaches between species s and t, A.
        rng: the random generator.
        max_iterations: relaxation sweeps before giving up with an error.

    Returns:
        positions (M, 3) in A about the sphere's centre, and species (M,) int indices into ``fractions``.
    """
    fractions = _fractions(fractions)
    distances = np.asarray(min_distances, dtype=float)
    if distances.shape != (len(fractions),) * 2 or not np.allclose(distances, distances.T) or not distances.min() > 0:
        raise ValueError(
            f"min_distances must be a symmetric ({len(fractions)}, {len(fractions)}) array of positive "
            f"distances in A, got {distances.tolist()}"
        )
    _check_positive(radius=radius, density=density)
    side = 2.0 * (radius + distances.max())
    positions = rng.random((int(round(density * side**3)), 3)) * side
    labels = rng.permutation(np.repeat(np.arange(len(fractions)), _apportion(len(positions), fractions)))
    positions = _relax_packing(positions, labels, distances, side, max_iterations, density) - side / 2.0
    distance = np.linalg.norm(positions, axis=1)
    keep = []
    for s, count in enumerate(_apportion(int(round(density * 4.0 / 3.0 * np.pi * radius**3)), fractions)):
        mine = np.flatnonzero(labels == s)
        keep.append(mine[np.argsort(distance[mine], kind="stable")[:count]])
        if count and distance[keep[-1][-1]] > side / 2.0:  # beyond the cube's inscribed sphere
            raise RuntimeError(f"the packing holds too few atoms of species {s} near its centre for radius {radius} A")
    keep = np.sort(np.concatenate(keep))
    return positions[keep], labels[keep]


def _relax_packing(
    positions: np.ndarray, labels: np.ndarray, distances: np.ndarray, side: float, max_iterations: int, density: float
) -> np.ndarray:
    """Points (N, 3) of a periodic cube of ``side`` A pushed apart until no pair of species (s, t)
    is closer than ``distances[s, t]`` A (see :func:`random_packing`); ``labels`` (N,) species."""
    reach = 1.02 * distances.max()
    for _ in range(max_iterations):
        i, j = cKDTree(positions, boxsize=side).query_pairs(reach, output_type="ndarray").T
        delta = positions[j] - positions[i]
        delta -= side * np.round(delta / side)  # minimum image
        length = np.linalg.norm(delta, axis=1)
        closest = distances[labels[i], labels[j]]
        if not np.any(length < closest):
            return positions
        target = 1.02 * closest
        near = length < target
        i, j, delta, length, target = i[near], j[near], delta[near], length[near], target[near]
        push = ((target - length) / (2.0 * np.maximum(length, 1e-9)))[:, None] * delta
        step = np.zeros_like(positions)
        np.add.at(step, i, -push)
        np.add.at(step, j, push)
        positions = np.mod(positions + step, side)
    raise RuntimeError(
        f"no packing of {density} atoms / A^3 with closest approaches {np.unique(distances).tolist()} A after "
        f"{max_iterations} sweeps: the density is too high for those distances"
    )


def _fractions(fractions) -> np.ndarray:
    """``fractions`` as a normalised (S,) float array; an error unless they are finite, >= 0, with a positive sum."""
    values = np.atleast_1d(np.asarray(fractions, dtype=float))
    if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)) or values.min() < 0 or values.sum() <= 0:
        raise ValueError(f"fractions must be non-negative numbers with a positive sum, got {fractions!r}")
    return values / values.sum()


def _apportion(n: int, fractions: np.ndarray) -> np.ndarray:
    """Counts (S,) summing to ``n`` in the proportions ``fractions`` (normalised): each species gets
    ``floor(n * f)`` and the remaining atoms go to the largest remainders (the first species on a
    tie), so every count is within one of ``n * f``."""
    exact = n * fractions
    counts = np.floor(exact + 1e-9).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


def amorphous_particle(
    elements,
    radius: float = 28.0,
    density: float = PD_DENSITY,
    min_distance: float | dict = PD_MIN_DISTANCE,
    seed: int = 0,
    fractions=None,
) -> Atoms:
    """A spherical amorphous particle of ``elements``, randomly mixed.

    With one closest approach for every pair (``min_distance`` a number), positions come from
    :func:`random_packing` and species are then assigned by a random permutation of a list that
    holds each element in its proportion: with ``fractions`` None, equal parts (each element
    ``N // len(elements)`` times, the remainder drawn without repetition, so the counts differ by
    at most one); else the counts of :func:`_apportion`, each within one of ``N * fraction``.

    With a closest approach per pair of species (``min_distance`` a mapping from pairs of
    symbols, e.g. ``{("Si", "O"): 1.55, ("O", "O"): 2.4, ("Si", "Si"): 2.9}``, order within a
    pair free, every pair present), species are part of the packing: :func:`random_mixed_packing`.

    Args:
        elements: chemical symbols, e.g. ["Pd"] or ["Ni", "Pd", "Pt"].
        radius: particle radius, A (28 A: about 5,800 atoms at 0.0635 / A^3; 10 A: about 270).
        density: number density, atoms / A^3.
        min_distance: closest approach of two atoms, A: a number, or a mapping of species pairs.
        seed: seed of ``numpy.random.default_rng``.
        fractions: proportions of ``elements`` (normalised), or None for equal parts.
    """
    elements = [elements] if isinstance(elements, str) else list(elements)
    if not elements:
        raise ValueError("elements must name at least one chemical symbol")
    if fractions is not None and len(np.atleast_1d(fractions)) != len(elements):
        raise ValueError(f"fractions {fractions!r} must give one proportion for each of {elements}")
    rng = np.random.default_rng(seed)
    if isinstance(min_distance, dict):
        labels_fractions = np.ones(len(elements)) if fractions is None else fractions
        positions, labels = random_mixed_packing(
            radius, density, labels_fractions, _pair_distances(elements, min_distance), rng
        )
        return _centred(Atoms(symbols=[elements[s] for s in labels], positions=positions))
    positions = random_packing(radius, density, min_distance, rng)
    n, k = len(positions), len(elements)
    if fractions is None:
        symbols = np.array(elements * (n // k) + list(rng.choice(elements, n % k, replace=False)))
    else:
        symbols = np.repeat(elements, _apportion(n, _fractions(fractions)))
    atoms = Atoms(symbols=list(rng.permutation(symbols)), positions=positions)
    return _centred(atoms)


def _pair_distances(elements: list, pairs: dict) -> np.ndarray:
    """(S, S) closest approaches of ``elements`` from a mapping of symbol pairs (either order) to A."""
    distances = np.full((len(elements),) * 2, np.nan)
    for (a, b), value in pairs.items():
        if a not in elements or b not in elements:
            raise ValueError(f"min_distance names the pair ({a}, {b}) but the elements are {elements}")
        distances[elements.index(a), elements.index(b)] = distances[elements.index(b), elements.index(a)] = value
    missing = [(elements[i], elements[j]) for i, j in zip(*np.nonzero(np.isnan(np.triu(distances)))) if i <= j]
    if missing:
        raise ValueError(f"min_distance gives no closest approach for the pairs {missing}")
    return distances


def amorphous_pd(radius: float = 28.0, seed: int = 0) -> Atoms:
    """Amorphous Pd: :func:`amorphous_particle` of Pd at 0.0635 atoms / A^3, closest approach 2.45 A.

    The paper reconstructs a simulated amorphous Pd particle; this is a dense random packing at
    the density of amorphous Pd (crystalline Pd: 0.068 / A^3).
    """
    return amorphous_particle(["Pd"], radius, PD_DENSITY, PD_MIN_DISTANCE, seed)


def amorphous_hea(radius: float = 28.0, seed: int = 0) -> Atoms:
    """Amorphous Ni-Pd-Pt high-entropy alloy: :func:`amorphous_particle` of Ni, Pd and Pt in equal
    parts, randomly mixed, with the density and closest approach of amorphous Pd.

    The paper reconstructs a simulated amorphous Ni-Pd-Pt particle; the three species differ in
    atomic number (28, 46, 78), which is what species identification has to resolve.
    """
    return amorphous_particle(["Ni", "Pd", "Pt"], radius, PD_DENSITY, PD_MIN_DISTANCE, seed)


def amorphous_si(radius: float = 28.0, seed: int = 0) -> Atoms:
    """Amorphous Si: :func:`amorphous_particle` of Si at 0.0499 atoms / A^3, closest approach 2.2 A.

    The light-element, low-dose test particle (DESIGN.md, "Real data: the low-dose regime"): a
    10 A radius (2 nm) holds about 210 atoms, 28 A about 4,600, 45 A (9 nm) about 19,000; the 45 A
    sphere builds in 3 to 4 s on one core (the relaxation converges in few sweeps at a-Si's low
    packing fraction, 0.28). A dense random packing, not a continuous random network: it has
    a-Si's density and shortest pairs, not its fourfold coordination.
    """
    return amorphous_particle(["Si"], radius, SI_DENSITY, SI_MIN_DISTANCE, seed)


def amorphous_sio2(radius: float = 28.0, seed: int = 0) -> Atoms:
    """Amorphous SiO2: Si and O in the ratio 1 : 2 at 2.2 g / cm^3 (0.0662 atoms / A^3), a random
    packing with a closest approach for each pair of species (Si-O 1.55, O-O 2.4, Si-Si 2.9 A;
    :func:`random_mixed_packing`), two O per Si up to the rounding of the count (one atom).

    Pair-dependent hard-sphere contacts, not a network of corner-sharing SiO4 tetrahedra: the
    density, composition and shortest distances are silica's, the coordination is not. A 10 A
    radius holds 277 atoms (92 Si), 28 A 6,083 (2 s to build).
    """
    return amorphous_particle(["Si", "O"], radius, SIO2_DENSITY, SIO2_MIN_DISTANCES, seed, fractions=(1.0, 2.0))


def amorphous_sigesn(radius: float = 28.0, fractions=(0.3, 0.5, 0.2), seed: int = 0) -> Atoms:
    """An amorphous Si-Ge-Sn alloy of the given atomic ``fractions`` (Si, Ge, Sn): three species
    of well separated atomic number (14, 32, 50), for species identification at low dose.

    Density by Vegard's law on the atomic volumes ``a^3 / 8`` of the diamond-structure crystals
    (:data:`DIAMOND_LATTICE`; a-Si's density is that of c-Si): 0.0414 atoms / A^3 at the default
    fractions. Closest approach of each pair: a-Si's ratio of closest approach to bond
    (2.2 / 2.352) times the mean of the two elements' bonds (Si-Si 2.20, Ge-Ge 2.29, Sn-Sn 2.63 A),
    through :func:`random_mixed_packing`; each count is within one atom of its fraction. A 10 A
    radius holds 173 atoms at the default fractions (52 Si, 86 Ge, 35 Sn).
    """
    elements = list(DIAMOND_LATTICE)
    share = _fractions(fractions)
    if len(share) != len(elements):
        raise ValueError(f"fractions {fractions!r} must give one proportion for each of {elements}")
    lattice = np.array([DIAMOND_LATTICE[e] for e in elements])
    density = 1.0 / float(share @ (lattice**3 / 8.0))
    bond = lattice * math.sqrt(3.0) / 4.0
    ratio = SI_MIN_DISTANCE / bond[0]
    pairs = {(a, b): ratio * (bond[i] + bond[j]) / 2.0 for i, a in enumerate(elements) for j, b in enumerate(elements)}
    return amorphous_particle(elements, radius, density, pairs, seed, fractions=share)


def amorphous_copdpt(radius: float = 28.0, fractions=None, seed: int = 0) -> Atoms:
    """An amorphous Co-Pd-Pt alloy: :func:`amorphous_particle` of Co, Pd and Pt (atomic numbers 27,
    46, 78) in the proportions ``fractions`` (None: equal parts), with the density and closest
    approach of amorphous Pd as :func:`amorphous_hea` (Co's atoms are about 10 % smaller, which
    this ignores)."""
    return amorphous_particle(["Co", "Pd", "Pt"], radius, PD_DENSITY, PD_MIN_DISTANCE, seed, fractions)


def zrte3_chain(length: float) -> Atoms:
    """A single ZrTe3 trigonal-prismatic chain along z, from z = 0 to about ``length`` A.

    MX3 chains are stacks of M-centred trigonal prisms of X sharing their triangular faces: per
    period b = 3.93 A one Zr on the axis and one Te triangle half a period away. The triangle is
    taken equilateral, at the radius that gives Zr-Te = 2.95 A (2.20 A; Te-Te 3.81 A). Real ZrTe3
    pairs two of the three Te more closely (about 2.8 A); the equilateral prism keeps what the
    ablation needs: two heavy species, 1 Zr to 3 Te, along the axis.
    """
    _check_positive(length=length)
    n = max(1, int(length // ZRTE3_PERIOD))
    half = ZRTE3_PERIOD / 2.0
    rho = math.sqrt(ZRTE_BOND**2 - half**2)
    angles = np.deg2rad([90.0, 210.0, 330.0])
    triangle = np.column_stack([rho * np.cos(angles), rho * np.sin(angles), np.zeros(3)])
    zr = [(0.0, 0.0, half + k * ZRTE3_PERIOD) for k in range(n)]
    te = [row + (0.0, 0.0, k * ZRTE3_PERIOD) for k in range(n + 1) for row in triangle]
    return Atoms(symbols=["Zr"] * n + ["Te"] * 3 * (n + 1), positions=np.array(zr + te))


def zrte_nanotube(length: float = 80.0, inner: int = 8, outer: int = 13) -> Atoms:
    """A double-wall carbon nanotube holding a ZrTe3 chain, axis along x (the tilt axis).

    The paper's ablation reconstructs a double-wall carbon nanotube filled with Zr-Te and asks
    whether the learned weights separate C, Te and Zr. Here: two concentric armchair tubes,
    (``inner``, ``inner``) and (``outer``, ``outer``) from ``ase.build.nanotube`` (C-C 1.42 A;
    (8, 8) and (13, 13) have radii 5.42 A and 8.81 A, 3.39 A apart, as graphite's 3.4 A), both
    cut to the same whole number of periods (2.46 A) near ``length``, with one
    :func:`zrte3_chain` (Te 2.20 A from the axis, so 3.2 A from the (8, 8) wall) on the axis over
    the same length. The axis is laid along x, the tilt axis, so every projection shows the tube
    side-on, as in nanotube tomography. Nothing is random.

    Args:
        length: tube length, A (80 A: about 2,800 atoms; 20 A: about 700).
        inner: chiral index n of the inner (n, n) tube.
        outer: chiral index n of the outer (n, n) tube.

    Raises:
        ValueError: if the walls are not about 3.4 A apart (3.0 to 3.8 A) or the chain comes
            closer than 2.5 A to the inner wall.
    """
    _check_positive(length=length, inner=inner, outer=outer)
    cells = max(1, round(length / (math.sqrt(3.0) * 1.42)))
    tubes = [nanotube(n, n, length=cells) for n in (inner, outer)]
    radii = [float(np.linalg.norm(t.positions[:, :2], axis=1).mean()) for t in tubes]
    if abs(radii[1] - radii[0] - GRAPHITE_SPACING) > 0.4:
        raise ValueError(
            f"walls ({inner},{inner}) and ({outer},{outer}) are {radii[1] - radii[0]:.2f} A apart, "
            f"not about {GRAPHITE_SPACING} A"
        )
    tube_length = float(tubes[0].cell[2, 2])
    chain = zrte3_chain(tube_length)
    chain.positions[:, 2] += (tube_length - np.ptp(chain.positions[:, 2])) / 2.0
    gap = radii[0] - np.linalg.norm(chain.positions[:, :2], axis=1).max()
    if gap < 2.5:
        raise ValueError(f"the ZrTe3 chain comes {gap:.2f} A from the ({inner},{inner}) wall; it needs 2.5 A")
    atoms = tubes[0] + tubes[1] + chain
    atoms.positions = atoms.positions[:, [2, 0, 1]]  # tube axis z -> x
    return _centred(atoms)


@dataclass(frozen=True)
class Particle:
    """A benchmark particle: how to build it at each size, and the species it holds.

    Attributes:
        build: the builder; called with ``sizes[size]`` as keywords (and ``seed`` if ``seeded``).
        sizes: keyword arguments of ``build`` for "quick" (hundreds of atoms) and "full".
        elements: chemical symbols of the species present, lightest first.
        seeded: whether ``build`` takes a ``seed``.
    """

    build: Callable[..., Atoms]
    sizes: dict
    elements: tuple
    seeded: bool = True


PARTICLES = {
    "au": Particle(au_particle, {"quick": {"radius": 10.0}, "full": {}}, ("Au",), seeded=False),
    "au-sphere": Particle(
        fcc_sphere,
        {"quick": {"radius": 10.0}, "full": {"radius": 29.0}, "large": {"radius": 74.0}},
        ("Au",),
        seeded=False,
    ),
    "fept": Particle(fept_particle, {"quick": {"radius": 10.0, "n_grains": 3}, "full": {}}, ("Fe", "Pt")),
    "pd": Particle(amorphous_pd, {"quick": {"radius": 10.0}, "full": {}}, ("Pd",)),
    "hea": Particle(amorphous_hea, {"quick": {"radius": 10.0}, "full": {}}, ("Ni", "Pd", "Pt")),
    "nanotube": Particle(zrte_nanotube, {"quick": {"length": 20.0}, "full": {}}, ("C", "Zr", "Te"), seeded=False),
    # The low-dose particles (DESIGN.md, "Real data: the low-dose regime"): quick = a 2 nm sphere.
    "si": Particle(amorphous_si, {"quick": {"radius": 10.0}, "full": {}, "large": {"radius": 45.0}}, ("Si",)),
    "sio2": Particle(amorphous_sio2, {"quick": {"radius": 10.0}, "full": {}}, ("O", "Si")),
    "sigesn": Particle(amorphous_sigesn, {"quick": {"radius": 10.0}, "full": {}}, ("Si", "Ge", "Sn")),
    "copdpt": Particle(amorphous_copdpt, {"quick": {"radius": 10.0}, "full": {}}, ("Co", "Pd", "Pt")),
}


def build_particle(name: str, size: str = "full", seed: int = 0) -> Atoms:
    """Build particle ``name`` of :data:`PARTICLES` at ``size`` (one of its ``sizes``) from ``seed``.

    Returns sample-frame Atoms (A), bounding box centred at the origin, no cell.
    """
    if name not in PARTICLES:
        raise ValueError(f"unknown particle {name!r}; choose one of {sorted(PARTICLES)}")
    particle = PARTICLES[name]
    if size not in particle.sizes:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(particle.sizes)}")
    kwargs = dict(particle.sizes[size])
    if particle.seeded:
        kwargs["seed"] = seed
    return particle.build(**kwargs)
