"""The ground-truth potential volume of a structure: abTEM's 3-D electrostatic potential on a voxel grid.

The paper scores reconstructions by the SSIM between the true and the reconstructed potential
volumes at 0.25 A voxels (DESIGN.md, "Evaluation"). The true volume here is abTEM's potential of
the atoms (Lobato parametrization, the same as the simulated projections of
:mod:`atomsplat.sim.simulate`), built in slices of one voxel's thickness with abTEM's finite
projection: slice k holds, at each lateral grid point, the potential integrated along z between
the slice limits (V A). We divide by the voxel size, so voxel ``[ix, iy, iz]`` holds

    (1 / v) * integral over z in [z_iz - v/2, z_iz + v/2] of V(x_ix, y_iy, z) dz      (V)

the mean of the potential over the voxel's extent along z, at the voxel's centre in x and y.

The grid is the 3-D version of the pixel grid of :mod:`atomsplat.geometry`, in the sample frame,
and the grid of :func:`atomsplat.render.voxelize.voxelize`: shape (nx, ny, nz), indexed
``[ix, iy, iz]``; along each axis of n voxels the centres lie at ``(idx + 0.5 - n / 2) * v``
(:func:`atomsplat.geometry.pixel_centers`), so the grid is centred on the rotation centre and its
corner is ``origin = -(nx, ny, nz) * v / 2`` (:func:`volume_origin`). With ``v`` the pixel size
and (nx, ny) = (W, H), the x-y cells are the detector pixels at tilt angle 0.

abTEM's grid (checked in abTEM 1.0.11's ``QuadratureProjectionIntegrals.integrate_on_grid``): a
slice array is indexed ``[ix, iy]`` with value at ``x = ix * sampling``, ``y = iy * sampling``
from the cell corner, and atoms within the cutoff of the cell's faces get periodic images. We
translate the atoms so that our voxel centres land on abTEM's grid points and our voxel faces on
its slice limits, pad the cell by the largest cutoff beyond every atom and every voxel so that no
image contributes, build only the slices of our grid one at a time, and crop each. Memory is the
output (4 bytes a voxel: 88 MB for 280^3) plus one padded slice.

abTEM's finite projection cuts each atom's potential at the radius where it falls below 1e-4 eV/e
(3.99 A for C, 5.03 A for Au) with a cosine taper from 85 % of it, and holds the potential within
half a voxel of a nucleus at its value at half a voxel: summed along z, the Au particle's volume
holds 93 % of the (uncut) infinite projection of :mod:`atomsplat.sim.simulate`, and 95 % of its
largest value.
"""

from __future__ import annotations

import math

import abtem
import numpy as np
from abtem.integrals import QuadratureProjectionIntegrals
from ase import Atoms
from ase.data import chemical_symbols


def volume_origin(shape, voxel: float) -> np.ndarray:
    """Corner (3,) in A, (x, y, z), of the centred grid of ``shape`` = (nx, ny, nz) voxels of edge
    ``voxel``: the ``origin`` argument of :func:`atomsplat.render.voxelize.voxelize`."""
    return -np.asarray(shape, dtype=float) * voxel / 2.0


def default_volume_shape(atoms: Atoms, voxel: float, margin: float = 4.0) -> tuple[int, int, int]:
    """Default (nx, ny, nz): the cell's extent along x, y and z when the cell spans all three
    directions (a 70 A box at 0.25 A gives 280^3), else a cube of side ``2 * (max |r| + margin)``,
    which holds every sample-frame atom and ``margin`` A around it; sides rounded up to an even
    number of voxels, as :func:`atomsplat.sim.simulate.default_shape` does for the detector."""
    if atoms.cell.rank == 3:
        extent = np.abs(atoms.cell.array).sum(axis=0)
    else:
        extent = np.full(3, 2.0 * (np.linalg.norm(atoms.positions, axis=1).max() + margin))
    return tuple(2 * math.ceil(e / voxel / 2.0 - 1e-9) for e in extent)


def potential_volume(atoms: Atoms, voxel: float = 0.25, shape=None) -> np.ndarray:
    """abTEM's potential of sample-frame ``atoms`` on the centred voxel grid (see the module notes).

    Args:
        atoms: the structure, positions in A in the sample frame (origin at the rotation centre).
        voxel: voxel edge v, A (also abTEM's lateral sampling and slice thickness).
        shape: (nx, ny, nz) voxels, or None for :func:`default_volume_shape`.

    Returns:
        (nx, ny, nz) float32, V: voxel ``[ix, iy, iz]``, centred at ``volume_origin(shape, v) +
        ((ix, iy, iz) + 0.5) * v``, holds the mean over its z extent of the Lobato potential at its
        lateral centre. Atoms outside the grid still contribute their tails.
    """
    if len(atoms) == 0:
        raise ValueError("the structure holds no atoms")
    if not voxel > 0:
        raise ValueError(f"voxel must be a positive size in A, got {voxel!r}")
    shape = default_volume_shape(atoms, voxel) if shape is None else tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive numbers of voxels (nx, ny, nz), got {shape}")
    positions = np.asarray(atoms.positions, dtype=float)
    if not np.all(np.isfinite(positions)):
        raise ValueError("the structure has non-finite positions")

    integrator = QuadratureProjectionIntegrals(parametrization="lobato")
    # One voxel more than the largest cutoff: no atom is within its cutoff of abTEM's cell faces.
    reach = max(integrator.cutoff(chemical_symbols[z]) for z in np.unique(atoms.numbers)) + voxel
    n = np.array(shape)
    half = n * voxel / 2.0  # the grid spans [-half, half] along x, y, z
    # Voxels of padding below and above the grid along each axis.
    below = np.maximum(0, np.ceil((reach - half - positions.min(axis=0)) / voxel)).astype(int)
    above = np.maximum(0, np.ceil((positions.max(axis=0) + reach - half) / voxel)).astype(int)
    total = n + below + above

    # Lateral: our voxel centre ix lies on abTEM's grid point ix + below, x = (ix + below) * v.
    # Depth: our voxel face iz lies on abTEM's slice limit iz + below, z = (iz + below) * v.
    placed = atoms.copy()
    placed.positions = positions + half + (below - np.array([0.5, 0.5, 0.0])) * voxel
    placed.cell = total * voxel
    placed.pbc = False
    potential = abtem.Potential(
        placed,
        gpts=(int(total[0]), int(total[1])),
        slice_thickness=(voxel,) * int(total[2]),
        integrator=integrator,
        device="cpu",
    )
    (nx, ny, nz), (bx, by, bz) = shape, below
    out = np.empty(shape, dtype=np.float32)
    for iz, sliced in enumerate(potential.generate_slices(first_slice=int(bz), last_slice=int(bz + nz))):
        out[:, :, iz] = np.asarray(sliced.array)[0, bx : bx + nx, by : by + ny] / voxel  # V A -> V
    return out
