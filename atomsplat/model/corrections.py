"""Per-projection corrections fitted beside the atoms: detector shifts and a smooth background.

Experimental tilt series are misaligned (each projection is displaced on the detector by an
unknown shift) and sit on a slowly varying background (carbon support, contamination). Both are
nuisance parameters of each projection, fitted jointly with the Gaussians:

    data_k(x, y) = projection of the atoms seen from view k, moved by s_k  +  b_k(x, y)

with ``s_k`` (2,) in A (the convention of the dataset's known ``shifts``: detector point =
``(M_k r)[:2] + s_k``) and ``b_k`` a polynomial of low degree in the detector coordinates; its
constant term is the pedestal (dark counts, detector offset) that counting data sit on.

Neither is learned by gradient steps; both are solved for the atoms as they are. The background
is linear in its coefficients: whenever the model renders measured projections in training, their
coefficients are set to the minimum of the data term (:meth:`atomsplat.model.losses.NoiseModel.fit_linear`;
variable projection). It then never lags behind the atoms, and a view's coefficients do not drift
while other views are being fitted (as those of an optimizer with momentum would).

The shifts are solved after each density pass (:meth:`ViewCorrections.solve_shifts`): one Fisher
scoring step per view from its shift as it is (the data term's exact gradient in the shift, over
its expected curvature ``I_k`` (2, 2), the sum of the image gradient's outer products over the
pixel variances) estimates the shift of maximum likelihood ``m_k``, whose covariance is ``I_k^-1``.
The shifts are then the posterior means of a prior ``s_k ~ N(0, diag(t^2))`` whose spread ``t``
(2,) the estimates themselves give (empirical Bayes, :func:`shrink_shifts`): ``s_k = T (T + I_k^-1)^-1
m_k``. Where the estimates are noise (their chi-square below :data:`SHIFT_SIGNIFICANCE`) every
shift is 0: an aligned series keeps its views where they are. The projections held out of
training get theirs once, for the final atoms and under the same prior
(:meth:`ViewCorrections.solve_held_out`). A misaligned one gives ``t`` of its
misalignment, far above the estimates' noise, and the shifts keep nearly all of it. Learned by
Adam instead, each view's shift moved only when its view was drawn, by about the learning rate per
step, and fitted the noise: on an aligned 2 nm Si series at 8e3 e/A^2 (peak 9
counts) the learned shifts were noise at the Cramer-Rao bound of one view's shift (5 pm per axis)
and cost a false atom; started late, they recovered 5 pm of a 23 pm misalignment
(docs/lowdose.md, "Shifts solved").

A projection's dose may drift from the others' (the beam current, the exposure, a detector's
gain): its atoms are then brighter or fainter by a factor ``g_k``, the gain of the view
(:attr:`atomsplat.model.cloud.Views.gains`), solved for the atoms at the end of training, before
the final refinement (:meth:`ViewCorrections.solve_gains`): each view's factor of best fit
(:func:`atom_scales`), then the posterior means under a spread that the factors themselves give
(:func:`shrink_gains`), 1 where they are noise; the gains' mean over the training views is 1 (the
atoms' weights take the series' mean dose). For counts a gain is exact: a projection recorded at g
times the dose has g times the mean counts of its atoms, still Poisson. Solved after every density
pass as the shifts are, on a series whose dose drifts by up to 20 % they changed training's path
and cost 3 false atoms and 1 pm (docs/lowdose.md, "A dose factor per projection"): before the
atoms are complete the factors carry their model error too.

Shifts have a gauge freedom: moving the whole sample by ``t`` (3,) moves every projection by
``(M_k t)[:2]``, which the shifts can absorb. :func:`remove_gauge` takes that component out so
that the shifts describe misalignment only and the atoms stay in the sample frame.

:class:`ViewCorrections` holds both for every projection of a series; the rest are pure
functions of tensors. Lengths in A.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import torch
from scipy import stats
from torch.nn import Parameter

from atomsplat.model.losses import NoiseModel

SHIFT_SIGNIFICANCE = 1e-3
"""Shifts are solved only where their estimates' chi-square is above this level of noise alone
(:func:`shrink_shifts`): on an aligned series tiny shifts changed no atom's evidence, but they
changed the path of training (4 Fe atoms of 287 lost in the 2 nm FePt particle at 8e3 e/A^2 with
shifts of 0.1-0.5 pm RMS; docs/lowdose.md, "Shifts solved")."""


HELD_OUT_STEPS = 5
"""Fisher scoring steps of each held-out view's shift from its whole pixel of best overlay
(:meth:`ViewCorrections.solve_held_out`)."""


FACTOR_ROUNDS = 3
"""Rounds of a view's background solved for its atoms' factor and the factor for its background
(:meth:`ViewCorrections.solve_gains`); a pedestal shares counts with the atoms."""


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


def coarse_shifts(atoms: torch.Tensor, data: torch.Tensor, pixel_size: float) -> torch.Tensor:
    """The whole-pixel shifts (V, 2) A (x, y) that best overlay model projections on data: the
    maximum of each pair's circular cross-correlation, both less their means.

    Args:
        atoms: (V, H, W) the model's projections at the views' shifts as they are.
        data: (V, H, W) the measured projections, their background taken off.
        pixel_size: A per pixel.

    Returns:
        (V, 2) the shifts to add, A: data(x) ~ atoms(x - shift).
    """
    height, width = data.shape[-2:]
    model = atoms - atoms.mean(dim=(1, 2), keepdim=True)
    measured = data - data.mean(dim=(1, 2), keepdim=True)
    overlap = torch.fft.irfft2(torch.fft.rfft2(measured) * torch.fft.rfft2(model).conj(), s=(height, width))
    best = overlap.flatten(1).argmax(dim=1)
    rows = (best // width + height // 2) % height - height // 2
    cols = (best % width + width // 2) % width - width // 2
    return torch.stack([cols, rows], dim=1).to(data.dtype) * pixel_size


def shrink_shifts(estimates: torch.Tensor, covariances: torch.Tensor, basis: torch.Tensor) -> tuple:
    """Empirical-Bayes posterior means of shifts from their independent estimates.

    Each estimate ``m_k`` is the true shift plus noise of covariance ``C_k``; the shifts are drawn
    from ``N(0, diag(t^2))``. Where the estimates are noise (their chi-square ``sum m_k^T C_k^-1 m_k``
    in the ``2N - 3`` dimensions left once the rigid translation, ``basis``, is taken out is below
    its :data:`SHIFT_SIGNIFICANCE` level), ``t = 0`` and every shift is 0: an aligned series is
    trained as without shifts. Otherwise ``t^2`` per detector axis is the estimates' mean square
    less their mean noise variance (method of moments, floored at 0), counted in those dimensions,
    and each shift is ``T (T + C_k)^-1 m_k`` without that translation.

    Args:
        estimates: (N, 2) shift estimates, A.
        covariances: (N, 2, 2) their noise covariances, A^2.
        basis: (2N, 3) from :func:`gauge_basis`.

    Returns:
        (shifts (N, 2) A, spread t (2,) A).
    """
    count = len(estimates)
    free = remove_gauge(estimates, basis)
    chi2 = float((free.unsqueeze(1) @ torch.linalg.solve(covariances, free.unsqueeze(-1))).sum())
    if chi2 < stats.chi2.isf(SHIFT_SIGNIFICANCE, max(2 * count - 3, 1)):
        return torch.zeros_like(estimates), estimates.new_zeros(2)
    kept = max(2 * count - 3, 1) / (2 * count)  # the share of the noise the gauge leaves
    spread2 = (free.square().mean(0) / kept - covariances.diagonal(dim1=1, dim2=2).mean(0)).clamp_min(0.0)
    prior = torch.diag_embed(spread2.expand(count, 2))
    shifts = (prior @ torch.linalg.solve(prior + covariances, free.unsqueeze(-1))).squeeze(-1)
    return remove_gauge(shifts, basis), spread2.sqrt()


def shrink_gains(estimates: torch.Tensor, variances: torch.Tensor, previous: torch.Tensor) -> tuple:
    """Empirical-Bayes gains of views from independent estimates of their factors.

    Each estimate ``m_k`` is the view's true factor plus noise of variance ``v_k``; the factors are
    drawn about a common level ``mu`` with spread ``t``. Where the estimates are noise about their
    weighted mean (their chi-square in ``N - 1`` dimensions below its :data:`SHIFT_SIGNIFICANCE`
    level) every gain is 1 and the level is the ``previous`` gains' mean (so that the model does not
    change: the atoms' weights take the dose every view shares). Otherwise ``t^2`` is the estimates'
    variance less their mean noise variance (floored at 0), the posterior means are ``s_k = mu +
    t^2 / (t^2 + v_k) (m_k - mu)`` and the gains ``s_k / mean(s)``, the level ``mean(s)``.

    Args:
        estimates: (N,) the factors; variances: (N,) their noise variances; previous: (N,) the views'
            gains the estimates were made with.

    Returns:
        (gains (N,) of mean 1, level: the factor the atoms' weights take, spread t relative to the
        level), float64.
    """
    estimates, variances = estimates.double(), variances.double()
    count = len(estimates)
    mean = (estimates / variances).sum() / (1.0 / variances).sum()
    chi2 = float(((estimates - mean).square() / variances).sum())
    if count < 2 or chi2 < stats.chi2.isf(SHIFT_SIGNIFICANCE, count - 1):
        return torch.ones_like(estimates), previous.double().mean(), estimates.new_zeros(())
    spread2 = (estimates.var() - variances.mean()).clamp_min(0.0)
    posterior = mean + spread2 / (spread2 + variances) * (estimates - mean)
    level = posterior.mean()
    return posterior / level, level, spread2.sqrt() / level


def atom_scales(
    atoms: torch.Tensor,
    background: torch.Tensor,
    measured: torch.Tensor,
    noise: NoiseModel,
    steps: int = 10,
    basis: Optional[torch.Tensor] = None,
) -> tuple:
    """The factor by which each view's atoms best fit its data, and its standard deviation.

    Per view the model ``s * atoms + background`` is fitted in ``s`` alone: for a likelihood data
    term (counts) by ``steps`` Fisher scoring steps from 1 (the data term's exact gradient over its
    expected information ``sum atoms^2 / variance``), the deviation the inverse square root of that
    information; otherwise by least squares, the deviation from the residual variance. A series
    whose dose drifts between projections gives factors that scatter beyond their deviations
    (:func:`atomsplat.report.projection_fit`; the gains of :meth:`ViewCorrections.solve_gains`). With
    the background's ``basis`` (T, H, W) the deviation is the factor's marginal, its information less
    what the background's coefficients, fitted too, take (the Schur complement; the background as
    given is then their fit).

    Args:
        atoms: (V, H, W) the atoms' projections; background: (V, H, W) the rest of the model;
        measured: (V, H, W), all in data units; noise: the data term; steps: Fisher scoring steps;
        basis: (T, H, W) the background's images, or None (the background known).

    Returns:
        (scales (V,), deviations (V,)), float64.
    """
    atoms, background, measured = atoms.double(), background.double(), measured.double()
    if not noise.is_likelihood:
        energy = atoms.square().sum(dim=(1, 2))
        scales = (atoms * (measured - background)).sum(dim=(1, 2)) / energy
        rest = measured - background - scales[:, None, None] * atoms
        residual = rest.square().mean(dim=(1, 2))
        return scales, (residual * _inverse_information(atoms, torch.ones_like(atoms), basis)).sqrt()
    scales = torch.ones(len(atoms), dtype=torch.float64, device=atoms.device)
    for _ in range(steps):
        free = scales.clone().requires_grad_(True)
        with torch.enable_grad():
            model = free[:, None, None] * atoms + background
            (gradient,) = torch.autograd.grad(noise.negative_log_likelihood(model, measured).sum(), free)
        variance = noise.variance(model.detach())
        information = (atoms.square() / variance).sum(dim=(1, 2))
        scales = scales - gradient / information
    return scales, _inverse_information(atoms, variance, basis).sqrt()


def _inverse_information(atoms: torch.Tensor, variance: torch.Tensor, basis: Optional[torch.Tensor]) -> torch.Tensor:
    """(V,) the inverse information of each view's factor on ``atoms`` (V, H, W) under pixel
    ``variance`` (V, H, W), with the coefficients of ``basis`` (T, H, W) free too when given."""
    columns = atoms.flatten(1)[:, None, :]  # (V, 1, P)
    if basis is not None:
        columns = torch.cat([columns, basis.flatten(1).to(atoms).expand(len(atoms), -1, -1)], dim=1)
    information = torch.einsum("vap,vbp->vab", columns / variance.flatten(1)[:, None, :], columns)
    return torch.linalg.inv(information)[:, 0, 0]


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
        shifts: solve a detector shift per training projection (:meth:`solve_shifts`).
        background_degree: degree of the polynomial background per projection (0: a constant
            pedestal, 1: a plane, ...), or -1 for none.
        noise: the data term the background minimises.
        shifts_from: training step from which the shifts are solved (before it they stay at 0, so
            that the atoms take shape first).
        gains: solve a dose factor per projection (:meth:`solve_gains`).

    State: ``view_shifts`` (N, 2) A (a Parameter without gradient: no optimizer moves it), and the
    buffers ``background`` (N, T) of coefficients in data units of :func:`background_basis` and
    ``gains`` (N,) (saved in checkpoints, not learned).
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
        gains: bool = False,
    ):
        super().__init__()
        count, height, width = measured.shape
        self.noise, self.shifts_from = noise, shifts_from
        self.params = torch.nn.ParameterDict()
        if shifts:
            self.params["view_shifts"] = Parameter(torch.zeros(count, 2), requires_grad=False)
            self.register_buffer("_gauge", gauge_basis(rotations[train].float()), persistent=False)
            self.register_buffer("_spread", torch.zeros(2, dtype=torch.float64), persistent=False)
        if gains:
            self.register_buffer("gains", torch.ones(count))
            self.register_buffer("_gain_spread", torch.zeros((), dtype=torch.float64), persistent=False)
        if shifts or gains:
            self.register_buffer("_train", train.long(), persistent=False)
        self.degree = background_degree
        if background_degree >= 0:
            basis = background_basis(height, width, background_degree)
            self.register_buffer("_basis", basis, persistent=False)
            self.register_buffer("background", border_background(measured.float(), basis))

    @property
    def solves_shifts(self) -> bool:
        return "view_shifts" in self.params

    @property
    def has_background(self) -> bool:
        return self.degree >= 0

    @property
    def solves_gains(self) -> bool:
        return hasattr(self, "gains")

    def scaled(self, views):
        """``views`` (a :class:`atomsplat.model.cloud.Views`) with the gains of their projections;
        free views, and all views where gains are not solved, as they are."""
        if views.indices is None or not self.solves_gains:
            return views
        return replace(views, gains=self.gains[views.indices].to(views.offsets))

    def applied(self, views):
        """``views`` with their projections' solved shifts (added to their known offsets) and gains."""
        return self.scaled(views).moved(self.offsets(views.offsets, views.indices))

    def offsets(self, offsets: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
        """Detector offsets (V, 2) A of views of projections ``indices`` (V,): the known ``offsets``
        plus the solved shifts (no gradient). Free views (None) keep theirs."""
        if indices is None or not self.solves_shifts:
            return offsets
        return offsets + self.params["view_shifts"].detach()[indices]

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

    def solve_gains(self, project: Callable, views, measured: torch.Tensor, chunk: int = 8) -> float:
        """Set the training views' gains to their empirical-Bayes posterior means for the atoms as
        they are (:func:`atom_scales` from the gains as they are, then :func:`shrink_gains`; each view's
        background solved first), their mean 1.

        Args:
            project: the atoms' projections (V, H, W) into views; views: the training views (those of
                ``train``) with their known offsets; measured: (N, H, W) all measured projections.

        Returns:
            the level: the factor by which the atoms' weights must be multiplied for the model to keep
            the dose every view shares (1 where the gains stay 1).
        """
        if not torch.equal(views.indices.cpu(), self._train.cpu()):
            raise ValueError("solve_gains needs the training views, in their order")
        factors, deviations = self._factors(project, views, measured, chunk)
        previous = self.gains[views.indices].double()
        gains, level, spread = shrink_gains(previous * factors, (previous * deviations).square(), previous)
        self.gains[views.indices] = gains.to(self.gains)
        self._gain_spread = spread.to(self._gain_spread)
        return float(level)

    def solve_held_out_gains(self, project: Callable, views, measured: torch.Tensor, chunk: int = 8) -> None:
        """Set the gains of views that training did not fit, for the final atoms (and their shifts):
        each view's factor of best fit (:func:`atom_scales` from 1), shrunk to 1 under the spread
        of the training views' last :meth:`solve_gains` (1 where it is 0)."""
        if not len(views):
            return
        self.gains[views.indices] = 1.0
        if float(self._gain_spread) <= 0.0:
            return
        factors, deviations = self._factors(project, views, measured, chunk)
        spread2 = self._gain_spread.square()
        self.gains[views.indices] = (1.0 + spread2 / (spread2 + deviations.square()) * (factors - 1.0)).to(self.gains)

    def _factors(self, project: Callable, views, measured: torch.Tensor, chunk: int) -> tuple:
        """(V,) each view's factor of best fit over its gain as it is, and its deviation
        (:func:`atom_scales`, for the smooth data term), float64; each view's background solved first."""
        factors, deviations, smooth = [], [], self.noise.smooth
        for part in self.applied(views).split(chunk):
            with torch.no_grad():
                atoms, data = project(part), measured[part.indices]
            factor, basis = torch.ones(len(atoms), dtype=torch.float64, device=atoms.device), self.basis
            for _ in range(FACTOR_ROUNDS if self.has_background else 1):  # the background and the factor in turn
                rest = torch.zeros_like(atoms)
                if self.has_background:
                    self.fit(atoms * factor[:, None, None].to(atoms), data, part.indices, noise=smooth)
                    rest = self.background_of(part.indices)
                factor, deviation = atom_scales(atoms, rest, data, smooth, basis=basis)
            factors.append(factor)
            deviations.append(deviation)
        return torch.cat(factors), torch.cat(deviations)

    def solve_shifts(self, project: Callable, views, measured: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Set the training views' shifts to their empirical-Bayes posterior means for the atoms as
        they are: one Fisher scoring step per view from its shift, then :func:`shrink_shifts` (see
        the module docstring). Each view's background is solved first, for the atoms as they are.

        Args:
            project: the atoms' projections (V, H, W) into views (a
                :class:`atomsplat.model.cloud.Views`), differentiable in their offsets.
            views: the training views (those of ``train``, in its order) with their known offsets.
            measured: (N, H, W) all measured projections.
            chunk: views projected at a time.

        Returns:
            the spread of the shifts t (2,) A, per detector axis (x, y).
        """
        if not torch.equal(views.indices.cpu(), self._train.cpu()):
            raise ValueError("solve_shifts needs the training views, in their order (the gauge is theirs)")
        estimates, covariances = self._estimates(project, self.scaled(views), measured, chunk)
        shifts, spread = shrink_shifts(estimates, covariances, self._gauge.double())
        self.params["view_shifts"].data[views.indices] = shifts.to(self.params["view_shifts"].dtype)
        self._spread = spread.to(self._spread)
        return spread.float()

    def solve_held_out(self, project: Callable, views, measured: torch.Tensor, chunk: int = 8) -> None:
        """Set the shifts of views that training did not fit (held out for evaluation) for the
        final atoms. Training brought its views' shifts along as the atoms took shape; these start
        far from theirs, with sharp atoms, so each starts at the whole pixel of best overlay
        (:func:`coarse_shifts`), takes :data:`HELD_OUT_STEPS` Fisher scoring steps to its maximum
        of likelihood ``m_k`` and ends at the posterior mean ``T (T + C_k)^-1 m_k`` under the spread
        ``t`` of the training views' last :meth:`solve_shifts` (0 for an aligned series, and before
        any solve). No gauge is taken out: the atoms, fixed by the training views, define it.

        Args:
            project: as for :meth:`solve_shifts`; views: views of projections not in ``train``;
            measured: (N, H, W) all measured projections; chunk: views projected at a time.
        """
        if not len(views):
            return
        views = self.scaled(views)
        if bool(torch.isin(views.indices.cpu(), self._train.cpu()).any()):
            raise ValueError("solve_held_out takes views that training does not fit")
        shifts = self.params["view_shifts"].data
        shifts[views.indices] = 0.0
        if not bool((self._spread > 0).any()):
            return
        for part in views.split(chunk):
            with torch.no_grad():
                atoms, data = project(part), measured[part.indices]
                if self.has_background:
                    self.fit(atoms, data, part.indices, noise=self.noise.smooth)
                    data = data - self.background_of(part.indices)
                shifts[part.indices] = coarse_shifts(atoms, data, part.pixel_size).to(shifts)
        for _ in range(HELD_OUT_STEPS):
            estimates, covariances = self._estimates(project, views, measured, chunk)
            shifts[views.indices] = estimates.to(shifts)
        prior = torch.diag_embed(self._spread.square().expand(len(views), 2))
        posterior = (prior @ torch.linalg.solve(prior + covariances, estimates.unsqueeze(-1))).squeeze(-1)
        shifts[views.indices] = posterior.to(shifts)

    def _estimates(self, project: Callable, views, measured: torch.Tensor, chunk: int) -> tuple:
        """Each view's maximum-likelihood shift, one Fisher scoring step from its shift as it is,
        and its covariance (the inverse expected information; for l2 scaled by the residual
        variance): ((V, 2) A, (V, 2, 2) A^2, float64). Each view's background is solved first."""
        smooth = self.noise.smooth
        estimates, informations, squares, pixels = [], [], 0.0, 0
        for part in views.split(chunk):
            data = measured[part.indices]
            shifts = self.params["view_shifts"].detach()[part.indices].clone().requires_grad_(True)
            with torch.enable_grad():
                atoms = project(part.moved(part.offsets + shifts))
                model = atoms
                if self.has_background:
                    self.fit(atoms.detach(), data, part.indices, noise=smooth)
                    model = atoms + self.background_of(part.indices)
                scale = smooth.nats if smooth.is_likelihood else 0.5  # l2: nats at unit variance
                (gradient,) = torch.autograd.grad(scale * smooth.pixels(model, data).sum(), shifts)
            model = model.detach()
            variance = smooth.variance(model) if smooth.is_likelihood else torch.ones_like(model)
            d_row, d_col = torch.gradient(model, spacing=part.pixel_size, dim=(1, 2))
            slopes = torch.stack([d_col, d_row], dim=-1).flatten(1, 2)  # (V, P, 2): -d model / d shift
            information = torch.einsum("vpa,vpb->vab", slopes / variance.flatten(1, 2)[..., None], slopes)
            estimates.append(shifts.detach() - torch.linalg.solve(information, gradient.unsqueeze(-1)).squeeze(-1))
            informations.append(information)
            squares += float((model - data).square().sum())
            pixels += model.numel()
        covariances = torch.linalg.inv(torch.cat(informations).double())
        if not smooth.is_likelihood:  # l2: the noise variance is the residual's
            covariances = covariances * (squares / pixels)
        return torch.cat(estimates).double(), covariances

    def as_dict(self) -> dict:
        """The fitted corrections, JSON-ready (empty when there are none): "shifts" (N, 2) A, the
        detector shift of each projection in the dataset's convention (add them to known shifts);
        "background" (N, T) coefficients in data units of the monomials of :func:`background_basis`
        and "background_degree"; "gains" (N,) the factor of each projection's atoms (its dose over
        the training views' mean)."""
        result = {}
        if self.solves_shifts:
            result["shifts"] = self.params["view_shifts"].detach().cpu().double().numpy().tolist()
        if self.has_background:
            result["background_degree"] = self.degree
            result["background"] = self.background.cpu().double().numpy().tolist()
        if self.solves_gains:
            result["gains"] = self.gains.cpu().double().numpy().tolist()
        return result
