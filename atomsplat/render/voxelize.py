"""The reconstructed potential on a voxel grid: exact mean densities of a sum of isotropic Gaussians.

An atom's density ``w (2 pi sigma^2)^(-3/2) exp(-|r - r_a|^2 / (2 sigma^2))`` factorises along x, y
and z, so its integral over an axis-aligned voxel is ``w`` times a product of three 1D masses, each
a difference of two erf values (:func:`atomsplat.render.projector.pixel_profiles`, the same 1D
integral the projector uses for pixels). The value is exact for any width, also below a voxel.

Each atom is evaluated in a window of at least ``+-window * sigma`` per axis, with the projector's
radii (:func:`atomsplat.render.projector.window_radii`); the mass outside it is below 6.4e-5 of the
atom per axis at ``window = 4``. Atoms are processed in chunks, so memory grows linearly with the
number of atoms and never holds a dense (atoms x voxels) array.
"""

from __future__ import annotations

import math

import torch

from atomsplat.geometry import pixel_index
from atomsplat.render.projector import DEFAULT_WINDOW, pixel_profiles, window_radii

# Elements of one (k, Lx, Ly, Lz) block of window values (and of its index block).
_BLOCK_ELEMENTS = 1 << 22


def voxelize(
    positions: torch.Tensor,
    sigmas: torch.Tensor,
    weights: torch.Tensor,
    origin,
    shape,
    voxel: float,
    window: float = DEFAULT_WINDOW,
) -> torch.Tensor:
    """Mean density of a sum of isotropic Gaussians in every voxel of a grid.

    The grid has ``shape = (nx, ny, nz)`` cubic voxels of edge ``voxel``; ``origin`` is its corner
    of smallest x, y and z (the outer corner of voxel (0, 0, 0), not that voxel's centre). Voxel
    ``(i, j, k)`` spans ``origin + (i, j, k) * voxel`` to ``origin + (i + 1, j + 1, k + 1) * voxel``,
    its centre is ``origin + ((i, j, k) + 0.5) * voxel``: the pixel-grid convention of DESIGN.md.
    With ``origin = (-W p / 2, -H p / 2, z0)`` and ``voxel = p`` the x-y cells are exactly the
    detector pixels, and ``volume.sum(2).T * voxel`` (rows along y, columns along x) is the
    projection at tilt angle 0 of the atoms between ``z0`` and ``z0 + nz p``.

    Args:
        positions: (K, 3) centres (x, y, z), A, sample frame.
        sigmas: (K,) widths, A, > 0.
        weights: (K,) integrated weights (any unit: data units x A^2 for atomsplat's atoms).
        origin: (3,) corner of the grid, A (sequence or tensor).
        shape: (nx, ny, nz) voxels along x, y, z.
        voxel: voxel edge, A.
        window: evaluated half-width per atom, in widths.

    Returns:
        (nx, ny, nz) tensor on the device and in the dtype of ``positions``: the integral of the
        density over each voxel divided by ``voxel^3``, in weight per A^3 (``volume.sum() *
        voxel**3`` is the total weight of atoms well inside the grid).
    """
    k = positions.shape[0]
    if positions.shape != (k, 3) or sigmas.shape != (k,) or weights.shape != (k,):
        raise ValueError(
            f"voxelize: positions (K, 3), sigmas (K,), weights (K,) expected, got {tuple(positions.shape)}, "
            f"{tuple(sigmas.shape)}, {tuple(weights.shape)}"
        )
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"voxelize: shape must be three positive voxel counts (nx, ny, nz), got {shape}")
    if not voxel > 0:
        raise ValueError(f"voxelize: voxel edge must be positive, got {voxel}")
    dtype, device = positions.dtype, positions.device
    origin = torch.as_tensor(origin, dtype=dtype, device=device).reshape(-1)
    if origin.shape != (3,):
        raise ValueError(f"voxelize: origin must be one point (x, y, z), got shape {tuple(origin.shape)}")
    sigmas, weights = sigmas.to(dtype), weights.to(dtype)
    if bool((sigmas <= 0).any()):
        raise ValueError("voxelize: widths must be positive")
    volume = torch.zeros(math.prod(shape), dtype=dtype, device=device)

    # Coordinates about the grid's centre, where cell m of an axis of n cells spans
    # [(m - n/2) voxel, (m + 1 - n/2) voxel]: the convention of pixel_profiles and pixel_index.
    counts = torch.tensor(shape, dtype=dtype, device=device)
    centred = positions - (origin + 0.5 * voxel * counts)
    # Window half-width R in voxels per atom: the window holds the 2R + 1 cells around the cell of
    # the centre. Atoms whose window misses the grid are skipped, so that a sub-grid holds exactly
    # the values of the same voxels of a larger one.
    radii = window_radii(sigmas, voxel, window)
    cell = torch.stack([pixel_index(centred[:, axis], n, voxel) for axis, n in enumerate(shape)], dim=1)
    reaches = (cell + radii[:, None] >= 0) & (cell - radii[:, None] < torch.tensor(shape, device=device))
    inside = torch.nonzero(reaches.all(dim=1)).squeeze(1)
    for radius in torch.unique(radii[inside]).tolist():
        members = inside[radii[inside] == radius]
        lengths = [min(2 * radius + 1, n) for n in shape]
        step = max(1, _BLOCK_ELEMENTS // math.prod(lengths))
        for first in range(0, len(members), step):
            atoms = members[first : first + step]
            _add_windows(volume, centred[atoms], sigmas[atoms], weights[atoms], shape, voxel, radius, lengths)
    return volume.view(shape)


def _add_windows(volume, centred, sigmas, weights, shape, voxel, radius, lengths):
    """Add atoms' window values into the flat ``volume`` (nx * ny * nz).

    An atom contributes to the 2R + 1 cells around the cell of its centre along each axis. The
    evaluated run of L = min(2R + 1, n) cells starts in [0, n - L], so that it lies in the grid and
    holds every in-grid cell of that window; its other cells are masked out. The values do not
    depend on where the grid ends: a sub-grid holds exactly the voxels of a larger grid.
    """
    profiles, cells = [], []
    for axis, (n, length) in enumerate(zip(shape, lengths)):
        coord = centred[None, :, axis]  # (1, k)
        own = pixel_index(coord, n, voxel)[0, :, None]  # (k, 1) cell of the centre
        start = (own.T - radius).clamp(0, n - length)  # (1, k)
        index = start[0, :, None] + torch.arange(length, device=volume.device)  # (k, L)
        profile = pixel_profiles(coord, sigmas, start, n, voxel, length)[0]  # (k, L)
        profiles.append(profile * ((index - own).abs() <= radius))
        cells.append(index)
    px, py, pz = profiles
    ix, iy, iz = cells
    scale = weights / voxel**3
    block = (px * scale[:, None])[:, :, None, None] * py[:, None, :, None] * pz[:, None, None, :]
    index = (ix[:, :, None, None] * shape[1] + iy[:, None, :, None]) * shape[2] + iz[:, None, None, :]
    volume.index_add_(0, index.reshape(-1), block.reshape(-1))
