"""Per-projection corrections fitted beside the atoms: detector shifts and a smooth background.

Experimental tilt series are misaligned (each projection is displaced on the detector by an
unknown shift) and sit on a slowly varying background (carbon support, contamination). Both are
nuisance parameters of each projection, fitted jointly with the Gaussians:

    data_k(x, y) = projection of the atoms seen from view k, moved by s_k  +  b_k(x, y)

with ``s_k`` (2,) in A (the convention of the dataset's known ``shifts``: detector point =
``(M_k r)[:2] + s_k``) and ``b_k`` a polynomial of low degree in the detector coordinates; its
constant term is the pedestal (dark counts, detector offset) that counting data sit on.

The shifts are learned by gradient steps with the atoms. The background is linear in its
coefficients, so it is not learned but solved: whenever the model renders measured projections
in training, their coefficients are set to the minimum of the data term for the atoms as they
are (:meth:`atomsplat.model.losses.NoiseModel.fit_linear`; variable projection). The background
then never lags behind the atoms, and a view's coefficients do not drift while other views are
being fitted (as those of an optimizer with momentum would).

Shifts have a gauge freedom: moving the whole sample by ``t`` (3,) moves every projection by
``(M_k t)[:2]``, which the shifts can absorb. :func:`remove_gauge` takes that component out so
that the learned shifts describe misalignment only and the atoms stay in the sample frame.

:class:`ViewCorrections` holds both for every projection of a series; the rest are pure
functions of tensors. Lengths in A.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import Parameter

from atomsplat.model.losses import NoiseModel


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


def border_background(projections: torch.Tensor, basis: torch.Tensor, border: float = 0.1) -> torch.Tensor:
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


class ViewCorrections(torch.nn.Module):
    """Learned shifts and solved backgrounds of the N projections of a tilt series.

    Args:
        rotations: (N, 3, 3) view matrices of all projections.
        train: (N_train,) long indices of the projections that training fits (the gauge is taken
            out of these).
        measured: (N, H, W) the measured projections; the background starts at a fit to their border.
        shifts: learn a detector shift per projection.
        background_degree: degree of the polynomial background per projection (0: a constant
            pedestal, 1: a plane, ...), or -1 for none.
        noise: the data term the background minimises.
        shifts_from: training step from which the shifts move (before it their gradient is dropped,
            so that the atoms take shape first).

    State: the Parameter ``view_shifts`` (N, 2) A, and the buffer ``background`` (N, T) of
    coefficients in data units of :func:`background_basis` (saved in checkpoints, not learned).
    """

    def __init__(
        self,
        rotations: torch.Tensor,
        train: torch.Tensor,
        measured: torch.Tensor,
        shifts: bool = False,
        background_degree: int = -1,
        noise: NoiseModel = NoiseModel(),
        shifts_from: int = 0,
    ):
        super().__init__()
        count, height, width = measured.shape
        self.noise, self.shifts_from = noise, shifts_from
        self.params = torch.nn.ParameterDict()
        if shifts:
            self.params["view_shifts"] = Parameter(torch.zeros(count, 2))
            self.register_buffer("_train", train.long(), persistent=False)
            self.register_buffer("_gauge", gauge_basis(rotations[train].float()), persistent=False)
        self.degree = background_degree
        if background_degree >= 0:
            basis = background_basis(height, width, background_degree)
            self.register_buffer("_basis", basis, persistent=False)
            self.register_buffer("background", border_background(measured.float(), basis))

    @property
    def learns_shifts(self) -> bool:
        return "view_shifts" in self.params

    @property
    def has_background(self) -> bool:
        return self.degree >= 0

    def offsets(self, offsets: torch.Tensor, indices: Optional[torch.Tensor], step: int) -> torch.Tensor:
        """Detector offsets (V, 2) A of views of projections ``indices`` (V,): the known ``offsets``
        plus the learned shifts (no gradient before ``shifts_from``). Free views (None) keep theirs."""
        if indices is None or not self.learns_shifts:
            return offsets
        shifts = self.params["view_shifts"][indices]
        return offsets + (shifts if step >= self.shifts_from else shifts.detach())

    def background_of(self, indices: torch.Tensor) -> torch.Tensor:
        """(V, H, W) the backgrounds of projections ``indices`` (V,)."""
        return background(self.background[indices], self._basis)

    @property
    def basis(self) -> Optional[torch.Tensor]:
        """(T, H, W) the background's images (:func:`background_basis`; the first is the constant 1),
        None without a background."""
        return self._basis if self.has_background else None

    @torch.no_grad()
    def fit(
        self,
        atoms: torch.Tensor,
        measured: torch.Tensor,
        indices: torch.Tensor,
        iterations: int = 5,
        noise: Optional[NoiseModel] = None,
    ) -> None:
        """Solve the background coefficients of projections ``indices`` (V,) for the atoms'
        projections ``atoms`` (V, H, W) and the ``measured`` ones (V, H, W), starting from their
        last fit, in at most ``iterations`` steps (:meth:`NoiseModel.fit_linear`; a few suffice
        in training, where the atoms move little between two visits of a view), for the training
        data term or another ``noise``."""
        start = self.background[indices]
        noise = self.noise if noise is None else noise
        self.background[indices] = noise.fit_linear(atoms, measured, self._basis, start, iterations)

    @torch.no_grad()
    def after_step(self) -> None:
        """Take the rigid translation out of the training views' shifts (the atoms carry it)."""
        if self.learns_shifts:
            shifts = self.params["view_shifts"].data
            shifts[self._train] = remove_gauge(shifts[self._train], self._gauge)

    def as_dict(self) -> dict:
        """The learned corrections, JSON-ready (empty when there are none): "shifts" (N, 2) A, the
        detector shift of each projection in the dataset's convention (add them to known shifts);
        "background" (N, T) coefficients in data units of the monomials of :func:`background_basis`
        and "background_degree"."""
        result = {}
        if self.learns_shifts:
            result["shifts"] = self.params["view_shifts"].detach().cpu().double().numpy().tolist()
        if self.has_background:
            result["background_degree"] = self.degree
            result["background"] = self.background.cpu().double().numpy().tolist()
        return result
