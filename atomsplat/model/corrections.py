"""Per-projection corrections learned beside the atoms: detector shifts and a smooth background.

Experimental tilt series are misaligned (each projection is displaced on the detector by an
unknown shift) and sit on a slowly varying background (carbon support, contamination). Both are
nuisance parameters of each projection, fitted jointly with the Gaussians:

    data_k(x, y) = projection of the atoms seen from view k, moved by s_k  +  b_k(x, y)

with ``s_k`` (2,) in A (the convention of the dataset's known ``shifts``: detector point =
``(M_k r)[:2] + s_k``) and ``b_k`` a polynomial of low degree in the detector coordinates.

Shifts have a gauge freedom: moving the whole sample by ``t`` (3,) moves every projection by
``(M_k t)[:2]``, which the shifts can absorb. :func:`remove_gauge` takes that component out so
that the learned shifts describe misalignment only and the atoms stay in the sample frame.

Pure functions of tensors; lengths in A.
"""

from __future__ import annotations

import torch


def gauge_basis(rotations: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (2N, 3) of the shift patterns that a rigid translation of the sample makes.

    Args:
        rotations: (N, 3, 3) view matrices ``M_k``.

    Returns:
        Q with orthonormal columns spanning {vec((M_k t)[:2] for k) : t in R^3}; a shift field
        (N, 2) flattened row by row is a vector of R^{2N}.
    """
    patterns = rotations[:, :2, :].reshape(-1, 3)  # (2N, 3): column i = vec((M_k e_i)[:2])
    q, _ = torch.linalg.qr(patterns)
    return q


def remove_gauge(shifts: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The shifts (N, 2) less their least-squares fit by a rigid translation of the sample."""
    flat = shifts.reshape(-1)
    return (flat - basis @ (basis.T @ flat)).reshape(shifts.shape)


def shift_error(learned: torch.Tensor, true: torch.Tensor, basis: torch.Tensor) -> float:
    """RMS distance (A) between learned and true shifts (N, 2), both without the part that a
    rigid translation of the sample explains (the atoms take that part instead)."""
    return float(remove_gauge(learned - true, basis).square().sum(1).mean().sqrt())


def background_basis(height: int, width: int, degree: int) -> torch.Tensor:
    """Monomials u^a v^b (a + b <= degree) on the detector, shape (T, H, W), T = (d + 1)(d + 2) / 2.

    u and v are the pixel-centre coordinates scaled to [-1, 1] across the image (u along x, the
    columns; v along y, the rows), so that coefficients of every order have comparable size.
    """
    if degree < 0:
        raise ValueError(f"background degree must be >= 0, got {degree}")
    u = (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2.0 - 1.0
    v = (torch.arange(height, dtype=torch.float64) + 0.5) / height * 2.0 - 1.0
    terms = [v[:, None] ** b * u[None, :] ** (total - b) for total in range(degree + 1) for b in range(total + 1)]
    return torch.stack(terms).float()


def fit_background(projections: torch.Tensor, basis: torch.Tensor, border: float = 0.1) -> torch.Tensor:
    """Coefficients (N, T) of the background of each projection, fitted to its border.

    The particle must lie inside the field of view (tomography needs it at every tilt), so the
    frame of relative width ``border`` on each side holds background and noise only. A least-squares
    fit of the basis to those pixels starts the learned background near its value.

    Args:
        projections: (N, H, W) measured projections.
        basis: (T, H, W) from :func:`background_basis`.
        border: width of the frame as a fraction of the image side.
    """
    n, height, width = projections.shape
    rows = max(1, int(round(border * height)))
    cols = max(1, int(round(border * width)))
    frame = torch.zeros(height, width, dtype=torch.bool)
    frame[:rows], frame[-rows:], frame[:, :cols], frame[:, -cols:] = True, True, True, True
    design = basis[:, frame].T.double()  # (P, T)
    values = projections[:, frame].T.double()  # (P, N)
    return torch.linalg.lstsq(design, values).solution.T.float()


def background(coefficients: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Backgrounds (V, H, W) from coefficients (V, T) and the basis (T, H, W)."""
    return torch.einsum("vt,thw->vhw", coefficients, basis.to(coefficients))
