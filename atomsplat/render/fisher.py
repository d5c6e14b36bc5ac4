"""Fisher information of isotropic Gaussians' parameters, for the Cramer-Rao bound on their positions.

Each pixel value m (data units) of a projection has a variance var(m) (Poisson counts: m / gain;
Gaussian noise: sigma^2; :meth:`atomsplat.model.losses.NoiseModel.variance`). For independent
pixels the Fisher information of parameters a, b is ``sum over pixels of (dm/da)(dm/db) / var(m)``
(exact for Poisson and Gaussian noise). Its inverse bounds the covariance of any unbiased estimate
(Cramer-Rao); the maximum-likelihood estimate reaches it when the counts are many.

Per atom the parameters are (x, y, z) A, log w and log sigma, and their derivatives are exact in
each atom's window (:meth:`atomsplat.render.footprints.AtomWindows.derivatives`). Two forms:

- :func:`fisher_blocks`: each atom's own 5 x 5 block, summed over views (K x 5 x 5; linear in the
  atoms, for any size). Inverting a block treats the other atoms as known: it ignores the
  correlation with neighbours that overlap in projection, so it bounds the error from below;
- :func:`fisher_matrix`: the whole (5K + V T) x (5K + V T) matrix, with the neighbours'
  correlations and T extra linear parameters per view (a pedestal), summed over detector tiles as
  dense products; its inverse gives the marginal variances. It is dense and its inverse costs
  (5K)^3, so it is meant for up to a few thousand atoms.

Pure functions of tensors; lengths in A.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from atomsplat.render.footprints import PaddedImages, atom_windows
from atomsplat.render.projector import DEFAULT_WINDOW

PARAMETERS = ("x", "y", "z", "log_weight", "log_sigma")


def fisher_blocks(
    positions: torch.Tensor,
    sigmas: torch.Tensor,
    weights: torch.Tensor,
    rotations: torch.Tensor,
    offsets: torch.Tensor,
    pixel_size: float,
    inverse_variance: torch.Tensor,
    window: float = DEFAULT_WINDOW,
    halo: Optional[Tuple[float, float]] = None,
) -> torch.Tensor:
    """Each atom's own Fisher information block, (K, 5, 5), parameters in :data:`PARAMETERS` order.

    Every derivative of a footprint is a sum of outer products of 1D profiles
    (:meth:`atomsplat.render.footprints.AtomWindows.separable_derivatives`), so each entry
    ``sum_ij W_ij d_a[i, j] d_b[i, j]`` is a sum of bilinear forms ``(r r')^T W (c c')`` of the
    profiles' products: the pixel weights W are applied once to each product of column profiles and
    no derivative image is formed. The detector-frame block (centre x, y, log w, log sigma) of each
    view is then carried to x, y, z by the view's rotation.

    Args:
        positions: (K, 3) A; sigmas: (K,) A; weights: (K,) (data units x A^2).
        rotations: (V, 3, 3) view matrices; offsets: (V, 2) detector offsets, A.
        pixel_size: A.
        inverse_variance: (V, H, W) 1 / var(m) of every pixel of the views (data units^-2).
        window: footprint half-width in widths, as the projector's.
        halo: (fraction, ratio) of atoms with a core and a halo
            (:func:`atomsplat.render.footprints.atom_windows`), or None.
    """
    views, height, width = inverse_variance.shape
    blocks = positions.new_zeros(len(positions), 5, 5)
    # d(centre x, centre y, log w, log sigma) / d(x, y, z, log w, log sigma), per view: (V, 4, 5)
    to_parameters = rotations.new_zeros(views, 4, 5)
    to_parameters[:, :2, :3] = rotations[:, :2, :]
    to_parameters[:, 2, 3] = to_parameters[:, 3, 4] = 1.0
    pixels = PaddedImages(inverse_variance)
    profiles = 3 * (1 if halo is None else 2)  # per axis: the value, centre and width derivatives of each component
    for part in atom_windows(
        positions, sigmas, weights, rotations, offsets, pixel_size, height, width, window, 1 + profiles**2 // 2, halo
    ):
        rows, cols, mixing, scale = part.separable_derivatives()  # (V, k, S, n), (V, k, S, n), (4, n, n), (k, 4)
        weight = part.gather(pixels).to(rows)  # (V, k, S, S): 0 outside the detector
        n = rows.shape[-1]
        col_products = (cols[..., :, None] * cols[..., None, :]).flatten(-2)  # (V, k, S, n n)
        row_products = (rows[..., :, None] * rows[..., None, :]).flatten(-2)
        forms = row_products.transpose(-1, -2) @ (weight @ col_products)  # (V, k, n n [r r'], n n [c c'])
        forms = (
            forms.view(*forms.shape[:2], n, n, n, n).permute(0, 1, 2, 4, 3, 5).reshape(*forms.shape[:2], n * n, n * n)
        )
        flat = mixing.reshape(4, n * n).to(forms)  # (4, [r c])
        detector = flat @ forms @ flat.T  # (V, k, 4, 4) per unit scale
        detector = detector * (scale[:, :, None] * scale[:, None, :]).to(detector)
        blocks[part.members] = torch.einsum(
            "vap,vkab,vbq->kpq", to_parameters.to(detector), detector, to_parameters.to(detector)
        )
    return blocks


def fisher_matrix(
    positions: torch.Tensor,
    sigmas: torch.Tensor,
    weights: torch.Tensor,
    rotations: torch.Tensor,
    offsets: torch.Tensor,
    pixel_size: float,
    inverse_variance: torch.Tensor,
    linear: torch.Tensor = None,
    window: float = DEFAULT_WINDOW,
    halo: Optional[Tuple[float, float]] = None,
) -> np.ndarray:
    """The whole Fisher information of all atoms' parameters (5K, in :data:`PARAMETERS` order per
    atom) and of T linear parameters per view (V * T more, view by view), as a dense float64 array.

    Each view's detector is cut into tiles of :data:`TILE` x :data:`TILE` pixels; a tile's Jacobian
    holds only the atoms whose windows reach it (and the linear terms), so ``J^T W J`` is summed
    tile by tile as dense matrix products (:func:`_add_tile_products`): a pixel costs about the
    square of the number of windows that cover it, at the speed of a matrix product.

    Args:
        positions, sigmas, weights, rotations, offsets, pixel_size, inverse_variance, window, halo:
            as :func:`fisher_blocks`.
        linear: (T, H, W) images of linear terms of every view (e.g. the constant 1 of a pedestal),
            or None.
    """
    views, count = len(rotations), len(positions)
    extra = 0 if linear is None else len(linear)
    total = torch.zeros(5 * count + views * extra, 5 * count + views * extra, dtype=torch.float64)
    linear = None if linear is None else linear.double()
    for v in range(views):  # one view's windows at a time
        derivatives, start, size = _view_windows(
            positions, sigmas, weights, rotations[v], offsets[v], pixel_size, inverse_variance.shape[1:], window, halo
        )
        terms = torch.arange(5 * count + v * extra, 5 * count + (v + 1) * extra)
        _add_tile_products(derivatives, start, size, inverse_variance[v].double(), linear, terms, total)
    return total.numpy()


def _view_windows(positions, sigmas, weights, rotation, offset, pixel_size, shape, window, halo):
    """One view's windows of all K atoms (``rotation`` (3, 3), ``offset`` (2,), ``shape`` (H, W) of
    the detector, the rest as :func:`fisher_matrix`), padded at their ends to the largest side S.

    Returns:
        derivatives: (K, 5, S, S) float64 d model / d parameters in each atom's window (0 in the padding);
        start: (K, 2) long the windows' first pixels (row, column);
        size: (K,) long the windows' own sides (a wide Gaussian's does not widen the others').
    """
    parts = list(
        atom_windows(positions, sigmas, weights, rotation[None], offset[None], pixel_size, *shape, window, 6, halo)
    )
    side, count = max(part.size for part in parts), len(positions)
    derivatives = torch.zeros(count, 5, side, side, dtype=torch.float64)
    start = torch.zeros(count, 2, dtype=torch.long)
    size = torch.zeros(count, dtype=torch.long)
    for part in parts:
        derivatives[part.members, :, : part.size, : part.size] = part.derivatives(rotation[None])[0].double()
        start[part.members] = torch.stack([part.grid.start_y[0], part.grid.start_x[0]], dim=1).long()
        size[part.members] = part.size
    return derivatives, start, size


TILE = 16
"""Detector tile side (pixels) of :func:`fisher_matrix`: smaller tiles hold fewer atoms each (fewer
products) but cost more calls."""


def _add_tile_products(derivatives, start, size, inverse_variance, linear, terms, total) -> None:
    """Add one view's ``J^T W J`` to ``total``, tile by tile.

    Args:
        derivatives: (K, 5, S, S), start (K, 2) and size (K,), from :func:`_view_windows`.
        inverse_variance: (H, W) float64 1 / var of the view's pixels.
        linear: (T, H, W) float64 linear terms, or None; terms: (T,) their rows in ``total``.
        total: (5K + ..., 5K + ...) float64, added to in place.
    """
    side = derivatives.shape[-1]
    height, width = inverse_variance.shape
    end = start + size[:, None]  # a tile's members: the atoms whose own windows reach it
    five = torch.arange(5)
    for top in range(0, height, TILE):
        rows = torch.arange(top, min(top + TILE, height))
        reach = (start[:, 0] <= rows[-1]) & (end[:, 0] > top)
        for left in range(0, width, TILE):
            cols = torch.arange(left, min(left + TILE, width))
            tile = (slice(top, top + TILE), slice(left, left + TILE))
            members = torch.nonzero(reach & (start[:, 1] <= cols[-1]) & (end[:, 1] > left)).squeeze(1)
            local_rows = rows[None, :] - start[members, 0, None]  # (k, h): the tile's rows in each window
            local_cols = cols[None, :] - start[members, 1, None]
            rows_inside = (local_rows >= 0) & (local_rows < side)
            cols_inside = (local_cols >= 0) & (local_cols < side)
            values = derivatives[
                members[:, None, None],
                :,
                local_rows.clamp(0, side - 1)[:, :, None],
                local_cols.clamp(0, side - 1)[:, None, :],
            ]  # (k, h, w, 5)
            values = values * (rows_inside[:, :, None] & cols_inside[:, None, :])[..., None]
            jacobian = values.permute(1, 2, 0, 3).reshape(len(rows) * len(cols), 5 * len(members))
            index = (5 * members[:, None] + five).reshape(-1)
            if linear is not None:
                jacobian = torch.cat([jacobian, linear[:, tile[0], tile[1]].reshape(len(linear), -1).T], dim=1)
                index = torch.cat([index, terms])
            if len(index) == 0:
                continue
            weight = inverse_variance[tile].reshape(-1, 1)
            flat = (index[:, None] * len(total) + index[None, :]).reshape(-1)
            total.view(-1).index_add_(0, flat, ((jacobian * weight).T @ jacobian).reshape(-1))


def position_covariances(blocks: torch.Tensor) -> torch.Tensor:
    """(K, 3, 3) covariance bounds of the positions (A^2) from per-atom blocks (K, 5, 5): the
    position part of each block's inverse (the width and weight unknown too). A singular block (an
    atom the data say nothing about, e.g. a Gaussian outside every view) gives infinite variances."""
    inverse, info = torch.linalg.inv_ex(blocks.double())
    covariance = inverse[:, :3, :3]
    singular = info != 0
    covariance[singular] = torch.diag(covariance.new_full((3,), math.inf))
    return covariance.to(blocks.dtype)


def marginal_position_variances(matrix: np.ndarray, count: int) -> np.ndarray:
    """(K, 3) the Cramer-Rao variances (A^2) of every atom's x, y and z: the diagonal of the inverse
    of the whole Fisher matrix (:func:`fisher_matrix`) at the position parameters. Parameters of no
    information (a zero diagonal: a Gaussian outside every view) are left out of the inverse, their
    variances infinite; a matrix still singular raises numpy's ``LinAlgError``."""
    matrix = np.asarray(matrix)
    informed = np.diag(matrix) > 0
    variances = np.full(len(matrix), np.inf)
    variances[informed] = np.diag(np.linalg.inv(matrix[np.ix_(informed, informed)]))
    index = (5 * np.arange(count)[:, None] + np.arange(3)[None, :]).reshape(-1)
    return variances[index].reshape(count, 3)
