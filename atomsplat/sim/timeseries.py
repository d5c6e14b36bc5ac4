"""A simulated time series: one particle whose atoms change between tilt series, on a drifting stage.

Each frame after the first changes the structure of the one before (:func:`evolve`): a few atoms
displaced (by a set distance, in the direction that keeps them farthest from the others), a few
removed, a few added on the surface; and the whole sample moves by a rigid drift. Every atom
carries an "id" array that follows it across frames, so that a test knows which atoms changed.
:func:`simulate_time_series` simulates the tilt series of every frame
(:func:`atomsplat.sim.simulate.simulate_tilt_series`) on one detector grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

from atomsplat.data.series import TiltSeries
from atomsplat.sim.simulate import default_shape, simulate_tilt_series

ID = "id"  # the per-atom array that names an atom across frames


@dataclass(frozen=True)
class Changes:
    """What changed from one frame to the next (ids of the "id" array).

    Attributes:
        displaced: ids of atoms moved by ``displacement`` A.
        removed: ids of atoms removed.
        added: ids of the new atoms.
        drift: (3,) A, the rigid translation of the whole sample since the frame before.
    """

    displaced: np.ndarray
    removed: np.ndarray
    added: np.ndarray
    drift: np.ndarray


def with_ids(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` with an "id" array (0, 1, ...) unless it has one."""
    out = atoms.copy()
    if ID not in out.arrays:
        out.set_array(ID, np.arange(len(out)))
    return out


def evolve(
    atoms: Atoms,
    rng: np.random.Generator,
    displaced: int = 3,
    removed: int = 2,
    added: int = 2,
    displacement: float = 0.8,
    min_distance: float = 2.2,
    bond: float = 2.7,
):
    """The next structure: ``displaced`` atoms moved by ``displacement`` A, ``removed`` atoms taken
    away, ``added`` atoms put on the surface; no two changed atoms are neighbours (within
    ``2 bond``), so that each change is seen alone.

    A displaced atom moves along the one of 200 random directions whose new place is farthest
    from every other atom (at least ``min_distance`` A); an added atom sits ``bond`` A outward
    from a surface atom (one of the 20 % farthest from the centre), at least ``min_distance`` A
    from every atom, with that atom's species.

    Args:
        atoms: the structure (A), with an "id" array (:func:`with_ids`).
        rng: the random generator.

    Returns:
        ``(next_atoms, changes)``: the new structure (ids kept; new atoms get new ids) and the
        :class:`Changes` (drift zero: the stage drift is :func:`simulate_time_series`'s).

    Raises:
        ValueError: the structure has no "id" array, or no room for the changes asked for.
    """
    if ID not in atoms.arrays:
        raise ValueError("evolve: the atoms need an 'id' array (with_ids)")
    positions = atoms.positions.copy()
    tree = cKDTree(positions)
    taken: List[int] = []  # changed atoms and the new ones' anchors: their neighbourhoods stay untouched

    def free(index: int) -> bool:
        return all(np.linalg.norm(positions[index] - positions[j]) > 2 * bond for j in taken)

    order = rng.permutation(len(atoms))
    moves = {}
    for index in order:
        if len(moves) == displaced:
            break
        if not free(index):
            continue
        directions = rng.normal(size=(200, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        candidates = positions[index] + displacement * directions
        distances, nearest = tree.query(candidates, k=2)
        clearance = np.where(nearest[:, 0] == index, distances[:, 1], distances[:, 0])
        best = int(np.argmax(clearance))
        if clearance[best] >= min_distance:
            moves[index] = candidates[best]
            taken.append(index)
    gone = []
    for index in order:
        if len(gone) == removed:
            break
        if index not in moves and free(index):
            gone.append(index)
            taken.append(index)
    radius = np.linalg.norm(positions - positions.mean(axis=0), axis=1)
    surface = np.flatnonzero(radius >= np.quantile(radius, 0.8))
    new_positions, new_symbols = [], []
    for index in rng.permutation(surface):
        if len(new_positions) == added:
            break
        if not free(index):
            continue
        outward = (positions[index] - positions.mean(axis=0)) / max(radius[index], 1e-9)
        directions = outward + 0.5 * rng.normal(size=(200, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        candidates = positions[index] + bond * directions
        clearance, _ = tree.query(candidates)
        others = np.array(new_positions).reshape(-1, 3)
        if len(others):
            clearance = np.minimum(clearance, np.linalg.norm(candidates[:, None] - others[None], axis=2).min(axis=1))
        best = int(np.argmax(clearance))
        if clearance[best] >= min_distance:
            new_positions.append(candidates[best])
            new_symbols.append(atoms[index].symbol)
            taken.append(index)
    if len(moves) < displaced or len(gone) < removed or len(new_positions) < added:
        raise ValueError(
            f"evolve: room for {len(moves)} displaced, {len(gone)} removed and {len(new_positions)} added atoms only"
        )
    ids = atoms.arrays[ID]
    out = atoms.copy()
    for index, place in moves.items():
        out.positions[index] = place
    keep = np.setdiff1d(np.arange(len(out)), gone)
    out = out[keep]
    new_ids = ids.max() + 1 + np.arange(added)
    extra = Atoms(symbols=new_symbols, positions=np.array(new_positions).reshape(-1, 3))
    extra.set_array(ID, new_ids)
    for name in out.arrays:
        if name not in ("numbers", "positions", ID):
            extra.set_array(name, np.zeros((added,) + out.arrays[name].shape[1:], out.arrays[name].dtype))
    out += extra
    changes = Changes(ids[list(moves)], ids[gone], new_ids, np.zeros(3))
    return out, changes


def simulate_time_series(
    atoms: Atoms,
    tilt_angles,
    frames: int = 3,
    seed: int = 0,
    drift: Sequence[float] = (0.7, -0.5, 0.4),
    displaced: int = 3,
    removed: int = 2,
    added: int = 2,
    displacement: float = 0.8,
    **simulation,
):
    """The tilt series of ``frames`` frames of ``atoms`` changing (:func:`evolve`) on a stage that
    moves by ``drift`` (A, plus up to 30 % of it at random per axis) between frames.

    Args:
        atoms: the first structure, sample frame, A.
        tilt_angles: (N,) degrees, the same for every frame.
        seed: seeds the changes, the drift and (``seed + t``) the noise of frame t.
        simulation: keywords of :func:`atomsplat.sim.simulate.simulate_tilt_series` (pixel_size,
            probe_sigma, noise_sigma, ...); the detector ``shape`` is that of the first structure
            with room for the drift.

    Returns:
        One ``(series, truth, changes)`` per frame: the :class:`TiltSeries`, the true atoms where
        the stage put them (sample frame, A, with "id"), and the :class:`Changes` since the frame
        before (empty for the first, whose drift is zero).
    """
    rng = np.random.default_rng(seed)
    structure = with_ids(atoms)
    pixel_size = simulation.get("pixel_size", 0.25)
    steps = [np.zeros(3)] + [
        np.asarray(drift, float) * (1.0 + 0.3 * rng.uniform(-1.0, 1.0, 3)) for _ in range(frames - 1)
    ]
    reach = float(np.linalg.norm(np.cumsum(steps, axis=0), axis=1).max())
    shape = simulation.pop("shape", None)
    if shape is None:
        shape = tuple(n + 2 * int(np.ceil(reach / pixel_size)) for n in default_shape(structure, pixel_size))
    simulation.setdefault("progress", False)
    noise_seed = simulation.pop("seed", seed)
    out = []
    offset = np.zeros(3)
    empty = np.zeros(0, int)
    for t in range(frames):
        changes = Changes(empty, empty, empty, np.zeros(3))
        if t > 0:
            structure, changes = evolve(structure, rng, displaced, removed, added, displacement)
            changes = Changes(changes.displaced, changes.removed, changes.added, steps[t])
            offset = offset + steps[t]
        truth = structure.copy()
        truth.positions += offset
        series: TiltSeries = simulate_tilt_series(truth, tilt_angles, shape=shape, seed=noise_seed + t, **simulation)
        out.append((series, truth, changes))
    return out
