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
  correlations and T extra linear parameters per view (a pedestal), as a sparse matrix; its inverse
  gives the marginal variances. Its size grows with the overlaps, so it is meant for up to a few
  thousand atoms.

Pure functions of tensors; lengths in A.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from scipy import sparse

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
) -> sparse.csr_matrix:
    """The whole Fisher information of all atoms' parameters (5K, in :data:`PARAMETERS` order per
    atom) and of T linear parameters per view (V * T more, view by view), as a sparse matrix.

    Args:
        positions, sigmas, weights, rotations, offsets, pixel_size, inverse_variance, window, halo:
            as :func:`fisher_blocks`.
        linear: (T, H, W) images of linear terms of every view (e.g. the constant 1 of a pedestal),
            or None.
    """
    views, height, width = inverse_variance.shape
    count = len(positions)
    extra = 0 if linear is None else len(linear)
    size_all = 5 * count + views * extra
    total = sparse.csr_matrix((size_all, size_all))
    for v in range(views):  # one view's Jacobian at a time: memory for one view's windows only
        rows, cols, values = [], [], []
        for part in atom_windows(
            positions, sigmas, weights, rotations[v : v + 1], offsets[v : v + 1], pixel_size, height, width, window, 6,
            halo,
        ):  # fmt: skip
            derivatives, size, radius = part.derivatives(rotations[v : v + 1])[0], part.size, part.grid.radius
            # padded-grid indices back to detector pixels, dropping the padding
            flat = part.grid.index.long().view(-1, size, size)
            row, col = flat // (width + 2 * radius) - radius, flat % (width + 2 * radius) - radius
            keep = (row >= 0) & (row < height) & (col >= 0) & (col < width)  # (k, S, S)
            pixel = (row * width + col)[keep]
            atom = part.members[:, None, None].expand_as(keep)[keep]
            for parameter in range(5):
                rows.append(pixel.cpu().numpy())
                cols.append((5 * atom + parameter).cpu().numpy())
                values.append(derivatives[:, parameter][keep].double().cpu().numpy())
        if extra:
            basis = linear.reshape(extra, -1).double().cpu().numpy()
            pix, term = np.nonzero(basis.T)
            rows.append(pix)
            cols.append(5 * count + v * extra + term)
            values.append(basis.T[pix, term])
        jacobian = sparse.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(height * width, size_all)
        )
        weight = sparse.diags(inverse_variance[v].reshape(-1).double().cpu().numpy())
        total = total + (jacobian.T @ weight @ jacobian)
    return total.tocsr()


def position_covariances(blocks: torch.Tensor) -> torch.Tensor:
    """(K, 3, 3) covariance bounds of the positions (A^2) from per-atom blocks (K, 5, 5): the
    position part of each block's inverse (the width and weight unknown too)."""
    return torch.linalg.inv(blocks.double())[:, :3, :3].to(blocks.dtype)


def marginal_position_variances(matrix: sparse.spmatrix, count: int) -> np.ndarray:
    """(K, 3) the Cramer-Rao variances (A^2) of every atom's x, y and z: the diagonal of the inverse
    of the whole Fisher matrix (:func:`fisher_matrix`) at the position parameters."""
    dense = matrix.toarray()
    inverse = np.linalg.inv(dense)
    index = (5 * np.arange(count)[:, None] + np.arange(3)[None, :]).reshape(-1)
    return inverse[index, index].reshape(count, 3)
