"""The final refinement: a fixed set of atoms fitted to all projections to convergence, and each
atom's positional uncertainty (no nerfstudio).

Training steps see a few projections at a time and end with a small, finite learning rate, which
leaves the atoms a little short of the likelihood's maximum. Once density control is done, the
atoms are refined on every training projection at once by L-BFGS (float64, strong-Wolfe line
search) on the smooth likelihood of the data (:attr:`atomsplat.model.losses.NoiseModel.smooth`:
Poisson for counts, Gaussian for data trained with L1); shifts stay as solved, tied species are
assigned again between rounds. The background is profiled out (solved for the atoms at every
evaluation, a small convex problem per view) and the species' means are parameters of the same
optimisation (their optimum is the mean of the atoms they tie): the fit ends at the joint maximum,
not at the fixed point of an alternation that each round approaches by a fraction. It stops when
an iteration moves no parameter by more than :data:`TOLERANCE` (A, or log units: 0.01 pm, 0.01 %)
or gains less than :data:`TOLERANCE` nats, both far below the statistical error: measured against
running to float64 rounding, it ends at the same atoms to 1e-3 pm (Au) and 0.005 pm (low-dose Si).

Then the Cramer-Rao bound of each atom's position (:mod:`atomsplat.render.fisher`) at the refined
parameters: with the correlations between all atoms and the per-view background when there are at
most ``full_limit`` atoms (the inverse of the whole Fisher matrix), else from each atom's own
block (which neglects the neighbours, a lower bound) scaled by what the neighbours add in a band
of atoms across the tilt axis (:data:`BAND`). For Poisson counts the pixel variances are known;
for other data the residual variance of the fit stands in for the noise level.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from atomsplat.geometry import pixel_index
from atomsplat.model.cloud import Views, bounded_shape, held, project
from atomsplat.model.density import merge, width_of
from atomsplat.render.fisher import fisher_blocks, fisher_matrix, marginal_position_variances, position_covariances
from atomsplat.render.projector import detector_centres

TOLERANCE = 1e-4
"""L-BFGS stops when an iteration moves no parameter by more than this (A or log units) or gains
less than this (nats)."""


@dataclass
class RefinementReport:
    """What the final refinement did: L-BFGS iterations, the mean data term per pixel before and
    after, its wall time (s), and the species prior's negative log-density (nats) before and after,
    or None without a prior: tying the weights to their species' can raise the data term (the
    sum of both falls)."""

    iterations: int
    before: float
    after: float
    seconds: float
    prior_before: Optional[float] = None
    prior_after: Optional[float] = None


def _views_of(views: Views, corrections) -> Views:
    """The views with their solved shifts and gains (fixed here), in float64."""
    views = corrections.applied(views)
    gains = None if views.gains is None else views.gains.double()
    return replace(views, rotations=views.rotations.double(), offsets=views.offsets.double(), gains=gains)


def _total(
    params, views: Views, measured, corrections, noise, scale: float, chunk: int, backward: bool, shape=None,
    bounds=None, solve: bool = False,
) -> float:  # fmt: skip
    """``scale`` x the data term summed over the pixels of ``views``, in chunks (gradients accumulated
    when ``backward``); log-widths clamped to ``bounds`` (low, high) when given (:func:`_bounded`),
    and then the halo's ratio too (:func:`atomsplat.model.cloud.bounded_shape`).
    With ``solve``, each view's background is first solved for the atoms (profiled out: at its
    optimum the data term's gradient in the atoms is that of the profile likelihood)."""
    total = 0.0
    for part in views.split(chunk):
        if bounds is None:
            model = project(params, part, shape=shape)
        else:
            model = project(_bounded(params, *bounds), part, shape=bounded_shape(shape))
        if corrections.has_background and solve:
            corrections.fit(model.detach().float(), measured[part.indices], part.indices, iterations=50, noise=noise)
        if corrections.has_background:
            model = model + corrections.background_of(part.indices).double()
        loss = scale * noise.pixels(model, measured[part.indices].double()).sum()
        if backward:
            loss.backward()
        total += float(loss.detach())
    return total


def _bounded(params: dict, low: float, high: float) -> dict:
    """``params`` with log-widths clamped to [low, high]: the objective L-BFGS sees is that of the
    widths the cloud keeps (:meth:`AtomCloud.clamp_widths`), flat beyond the bounds, so the clamp
    after the optimisation cannot raise it."""
    return {name: held(p, low, high) if name in ("log_sigmas", "log_scales") else p for name, p in params.items()}


def _nats(noise, residual_variance: float) -> float:
    """The factor that turns the summed data term into a negative log-likelihood in nats (up to a
    constant): :attr:`NoiseModel.nats` for likelihoods, 1 / (2 s^2) for "l2" with s^2 the residual
    variance. In nats the objective's curvature is the Fisher information, which L-BFGS's unit first
    steps and tolerances suit whatever the dose."""
    return noise.nats if noise.nats is not None else 0.5 / max(residual_variance, 1e-30)


def refine(cloud, corrections, measured: torch.Tensor, views: Views, noise, iterations: int = 100,
           rounds: int = 2, chunk: int = 8, prior=None, solve_background: bool = True) -> RefinementReport:  # fmt: skip
    """Refine ``cloud``'s parameters in place on all ``views`` (of measured projections) to convergence.

    Args:
        cloud: the :class:`atomsplat.model.cloud.AtomCloud` (its Parameters keep their identity).
        corrections: the :class:`atomsplat.model.corrections.ViewCorrections` (shifts and background).
        measured: (N, H, W) all measured projections; ``views.indices`` select from them.
        views: the training views.
        noise: the training data term; its :attr:`smooth` form is maximised.
        iterations: most L-BFGS iterations per round; rounds: the prior's species assigned again
            between them.
        chunk: views projected at a time.
        prior: a :class:`atomsplat.model.species_prior.SpeciesPrior` whose negative log-prior (nats)
            joins the objective, or None; its species means are optimised with the atoms, its species
            assigned again between rounds (it is left with the last round's species and optimal means).
        solve_background: solve the background with the atoms (False: it stays as it is).
    """
    start = time.perf_counter()
    smooth = noise.smooth
    views = _views_of(views, corrections)
    params = {name: p.detach().double().clone().requires_grad_(True) for name, p in cloud.params.items()}
    shape = None
    if cloud.shape_params is not None:
        shape = {name: p.detach().double().clone().requires_grad_(True) for name, p in cloud.shape_params.items()}
    pixels = len(views) * views.height * views.width
    done = 0
    low, high = math.log(cloud.min_sigma), math.log(cloud.max_sigma)
    with torch.no_grad():
        before = _total(params, views, measured, corrections, smooth, 1.0, chunk, False, shape, (low, high)) / pixels
    scale = _nats(smooth, before if smooth.kind == "l2" else 0.0)
    prior_before = None if prior is None else _prior_nats(prior, params, low, high)
    for k in range(rounds):
        if prior is not None and k > 0:  # species assigned again to the refined weights
            bounded = _bounded(params, low, high)
            prior.update(bounded["log_weights"].detach(), bounded["log_sigmas"].detach(), prior.members)
        means = None if prior is None else prior.means.detach().double().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [*params.values(), *([] if shape is None else shape.values()), *([] if means is None else [means])],
            lr=1.0,
            max_iter=iterations,
            history_size=20,
            tolerance_grad=1e-9,
            tolerance_change=TOLERANCE,  # nats, and A (or log units) per iteration
            line_search_fn="strong_wolfe",
        )

        def closure():
            optimizer.zero_grad()
            total = _total(
                params, views, measured, corrections, smooth, scale, chunk, True, shape, (low, high), solve_background
            )
            if prior is not None:
                bounded = _bounded(params, low, high)
                penalty = prior.negative_log_prior(bounded["log_weights"], bounded["log_sigmas"], means)
                penalty.backward()
                total += float(penalty.detach())
            return torch.tensor(total, dtype=torch.float64)  # float32 would end the search at its rounding

        optimizer.step(closure)
        if means is not None:
            prior.means = means.detach().to(prior.means.dtype)
        done += int(optimizer.state[optimizer.param_groups[0]["params"][0]].get("n_iter", 0))
    with torch.no_grad():
        for name, p in cloud.params.items():
            p.copy_(params[name].to(p.dtype))
        for name, p in (cloud.shape_params or {}).items():
            p.copy_(shape[name].to(p.dtype))
        cloud.clamp_widths()
        after = _total(
            cloud.params, views, measured, corrections, smooth, 1.0, chunk, False, cloud.shape_params, None,
            solve_background,
        ) / pixels  # fmt: skip
    prior_after = None if prior is None else _prior_nats(prior, cloud.detached(), low, high)
    return RefinementReport(done, before, after, time.perf_counter() - start, prior_before, prior_after)


def _prior_nats(prior, params: dict, low: float, high: float) -> float:
    """The species ``prior``'s negative log-density (nats) of Gaussians ``params``, widths bounded."""
    bounded = _bounded(params, low, high)
    with torch.no_grad():
        return float(prior.negative_log_prior(bounded["log_weights"].detach(), bounded["log_sigmas"].detach()))


def _local_fit(cloud, group: torch.Tensor, views: Views, model: torch.Tensor, measured: torch.Tensor, noise,
               margin: float, prior, iterations: int):  # fmt: skip
    """The Gaussians ``group`` (M,) long of ``cloud`` fitted alone to convergence (positions, widths
    and weights; L-BFGS as in :func:`refine`), every other Gaussian, the atom shape, the shifts and
    the background held at ``model`` (V, H, W), on the pixels the group can reach: in each view a
    window over their footprints widened by ``margin`` (A) for them to move in; with a species
    ``prior``, its terms of these Gaussians join what is minimised (the species' means held, each
    Gaussian's term that of the species it is nearest). Returns the group's parameters as they are
    ({name: (M, ...)} float64) and ``fit(start, rows)``: the group's Gaussians ``rows`` (N,) long of
    the cloud started at ``start`` ({name: (N, ...)}) and fitted, the others of the group absent;
    it returns the data term (nats), the prior's term (nats; 0 without a prior) and the fitted
    parameters."""
    params = cloud.detached()
    local = {name: values[group].double() for name, values in params.items()}
    halo = cloud.halo()
    reach = cloud.window * float(width_of(local).max()) * (1.0 if halo is None else halo[1]) + margin
    views = replace(views, rotations=views.rotations.double(), offsets=views.offsets.double(), indices=None)
    centres = detector_centres(local["positions"], views.rotations, views.offsets)  # (V, M, 2)

    def span(coord: torch.Tensor, n: int):
        first = pixel_index(coord.min(dim=1).values - reach, n, views.pixel_size)
        size = min(int((pixel_index(coord.max(dim=1).values + reach, n, views.pixel_size) - first).max()) + 1, n)
        return first.clamp(0, n - size), size

    (start_x, width), (start_y, height) = span(centres[..., 0], views.width), span(centres[..., 1], views.height)
    window = views.cropped(start_y, start_x, height, width)
    rows = (start_y[:, None] + torch.arange(height, device=start_y.device))[:, :, None]
    cols = (start_x[:, None] + torch.arange(width, device=start_x.device))[:, None, :]
    every = torch.arange(len(views), device=rows.device)[:, None, None]
    shape = None if cloud.shape_params is None else {n: p.detach().double() for n, p in cloud.shape_params.items()}
    data = measured[every, rows, cols].double()
    rest = model[every, rows, cols].double() - project(local, window, window=cloud.window, shape=shape)
    low, high = math.log(cloud.min_sigma), math.log(cloud.max_sigma)

    def fit(start: dict, members: torch.Tensor) -> Tuple[float, float, dict]:
        free = {name: values.clone().requires_grad_(True) for name, values in start.items()}

        def nats(part: dict) -> Tuple[torch.Tensor, torch.Tensor]:
            part = _bounded(part, low, high)
            value = noise.negative_log_likelihood(rest + project(part, window, window=cloud.window, shape=shape), data)
            if prior is None:
                return value.sum(), value.new_zeros(())
            return value.sum(), prior.negative_log_prior(
                part["log_weights"], part["log_sigmas"], rows=members, relabel=True
            )

        optimizer = torch.optim.LBFGS(
            list(free.values()), lr=1.0, max_iter=iterations, history_size=20, tolerance_grad=1e-9,
            tolerance_change=TOLERANCE, line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure():
            optimizer.zero_grad()
            value = sum(nats(free))
            value.backward()
            return value

        if len(start["positions"]):
            optimizer.step(closure)
        with torch.no_grad():
            data_term, prior_term = nats(free)
            return float(data_term), float(prior_term), _bounded({n: v.detach() for n, v in free.items()}, low, high)

    return local, fit


def removal_rise(
    cloud, drop: int, neighbours: torch.Tensor, views: Views, model: torch.Tensor, measured: torch.Tensor, noise,
    margin: float, prior=None, iterations: int = 100,
) -> Tuple[float, Dict[str, torch.Tensor]]:  # fmt: skip
    """How much the negative log-likelihood rises (nats) when Gaussian ``drop`` of ``cloud`` is
    removed: the minimum with ``drop`` and its ``neighbours`` fitted to convergence against the
    minimum without ``drop`` (:func:`_local_fit`; with a species ``prior`` its terms join what is
    minimised, each Gaussian's that of the species it is nearest: a neighbour that takes up the
    counts of ``drop`` may change species, as one of two Gaussians on a Si atom, each of an O's
    weight, must), the rise that of the data term alone, as :func:`refine` reports it. The
    likelihood-ratio statistic of ``drop`` with its neighbourhood free to take up its counts. The
    fit without ``drop`` is the better of two starts: the neighbours as they are, and the nearest
    one where it has taken up those counts (the two weights summed, at their weighted mean). From
    where it is, that one may stay on its species' side of the prior's barrier: the other half of a
    Si atom fitted as two O-weight Gaussians stayed near O's weight (SiO2 at 1.6e4, 2026-12-07:
    1.1-1.2 x O's, the rise 9-12 nats; started merged, Si's weight and 2.3-6.6 nats).

    Args:
        cloud: the :class:`atomsplat.model.cloud.AtomCloud` (not changed).
        drop: index of the Gaussian to remove; neighbours: (M,) long indices of those to refit.
        views: the training views, with their solved shifts and gains.
        model: (V, H, W) the model of ``views`` as it is (Gaussians and background), data units.
        measured: (V, H, W) the measured projections of ``views``.
        noise: a likelihood data term (:attr:`atomsplat.model.losses.NoiseModel.is_likelihood`).
        margin: A; prior: a :class:`atomsplat.model.species_prior.SpeciesPrior` or None;
        iterations: most L-BFGS iterations.

    Returns:
        The rise (nats) and the neighbours' refitted parameters ({name: (M, ...)}, the cloud's dtype).
    """
    group = torch.cat([torch.tensor([drop], device=neighbours.device), neighbours])
    local, fit = _local_fit(cloud, group, views, model, measured, noise, margin, prior, iterations)
    with_it, _, _ = fit(local, group)
    rest = {name: values[1:] for name, values in local.items()}
    without, prior_term, fitted = fit(rest, neighbours)
    if len(neighbours):  # the nearest neighbour started where it has taken up the counts of drop
        nearest = int((rest["positions"] - local["positions"][0]).norm(dim=1).argmin())
        both = [0, nearest + 1]
        one, _ = merge({name: local[name][both] for name in ("positions", "log_weights")}, torch.zeros(2).long())
        merged = {name: values.clone() for name, values in rest.items()}
        for name, values in one.items():
            merged[name][nearest] = values[0]
        data_term, merged_prior, candidate = fit(merged, neighbours)
        if data_term + merged_prior < without + prior_term:
            without, fitted = data_term, candidate
    dtype = cloud.weights.dtype
    return without - with_it, {name: values.to(dtype) for name, values in fitted.items()}


def relabel_fall(
    cloud, pair: torch.Tensor, neighbours: torch.Tensor, views: Views, model: torch.Tensor, measured: torch.Tensor,
    noise, margin: float, prior, iterations: int = 100,
) -> Tuple[float, Dict[str, torch.Tensor]]:  # fmt: skip
    """How much the negative log-posterior (data term and species ``prior``, nats) falls at best when
    two close Gaussians ``pair`` (2,) long of ``cloud`` take other species: for each other
    assignment of the prior's species to the two, their log-weights and log-widths started at those
    species' means (positions as they are) and fitted to convergence with their ``neighbours`` (M,)
    long, against the same fit from the Gaussians as they are (:func:`_local_fit`). Two Gaussians
    on a Si atom and its O neighbour can hold each other's species, the Si's weight beside the O and
    the O's on the Si, a minimum that no gradient step leaves (their weights would have to pass
    through each other's), with the same parameters as the right one: the better of the two is the
    one of higher posterior. Arguments as :func:`removal_rise`; ``prior``: a
    :class:`atomsplat.model.species_prior.SpeciesPrior` of two species or more.

    Returns:
        The fall (nats; 0 where no other assignment ends at other species with a lower value) and the best assignment's
        refitted parameters of ``pair`` then ``neighbours`` ({name: (M + 2, ...)}, the cloud's dtype).
    """
    group = torch.cat([pair, neighbours])
    local, fit = _local_fit(cloud, group, views, model, measured, noise, margin, prior, iterations)
    data_term, prior_term, fitted = fit(local, group)
    best = now = data_term + prior_term

    def species(part: dict) -> tuple:
        return tuple(prior.nearest(part["log_weights"][:2], part["log_sigmas"][:2]).tolist())

    current = species(fitted)
    means = prior.means.double().to(local["log_weights"].device)
    for labels in itertools.product(range(len(means)), repeat=2):
        if labels == current:
            continue
        start = {name: values.clone() for name, values in local.items()}
        start["log_weights"][:2] = means[list(labels), 0]
        start["log_sigmas"][:2] = means[list(labels), 1]
        data_term, prior_term, candidate = fit(start, group)
        if data_term + prior_term < best and species(candidate) != current:  # not the same minimum again
            best, fitted = data_term + prior_term, candidate
    dtype = cloud.weights.dtype
    return now - best, {name: values.to(dtype) for name, values in fitted.items()}


UNCERTAINTY_KINDS = ("not recorded", "marginal", "own block", "scaled own block")
"""How positional deviations were computed (:func:`position_uncertainties` returns one of the last
three): "marginal", from the inverse of the whole Fisher matrix, every atom's correlations with its
neighbours included (the Cramer-Rao bound); "scaled own block", each atom's own block scaled per
axis by the median ratio of marginal to own-block deviations over a band of atoms across the middle
of the tilt axis (:data:`BAND`), where the whole matrix is too large: an estimate of the marginal,
not a bound; "own block", each atom's own block with its neighbours held known, a lower bound of the
marginal (on the 9 nm Si particle at 8e3 e/A^2, at the true atoms, 0.73 times it in x and 0.78 in y
and z; docs/lowdose.md, "Not yet at scale"), where neither fits; "not recorded": a run saved before the kind
was kept."""

BAND = (1.0, 2.0)
"""A: the half-width of the band of atoms (along x, the tilt axis, about the atoms' median x) whose
marginal deviations scale the own blocks above ``full_limit`` atoms, and the margin of atoms beyond
it that enter the band's Fisher matrix (the atoms further out held known). On the 9 nm Si particle
at 8e3 e/A^2 margins of 2 and 4 A gave the same ratios to 1 % (``benchmarks/marginal_bound.py``)."""

BAND_MINIMUM = 10
"""Fewest atoms in the band's middle for a median ratio; below it the own blocks stand alone."""


def band_rows(positions: np.ndarray) -> tuple:
    """The :data:`BAND` about the median x of ``positions`` (K, 3) A: (indices of the atoms within
    half-width + margin, a boolean over them marking those within the half-width)."""
    offset = np.abs(positions[:, 0] - np.median(positions[:, 0]))
    rows = np.flatnonzero(offset < BAND[0] + BAND[1])
    return rows, offset[rows] < BAND[0]


@torch.no_grad()
def position_uncertainties(
    cloud,
    corrections,
    measured: torch.Tensor,
    views: Views,
    noise,
    full_limit: int = 1000,
    chunk: int = 8,
    prior=None,
    band_limit: int | None = None,
):
    """(K, 3) the Cramer-Rao standard deviations (A) of every atom's x, y, z at the cloud's parameters,
    and how they were computed (:data:`UNCERTAINTY_KINDS`): "marginal", the whole Fisher matrix with
    the background's parameters, for at most ``full_limit`` atoms; above it "scaled own block", when
    the :data:`BAND` holds at most ``band_limit`` atoms (default 3 x ``full_limit``; its whole matrix
    is built as the marginal's) and at least :data:`BAND_MINIMUM` in its middle, else "own block".
    A species ``prior`` adds its curvature to the log-weights' and log-widths' information.
    Isotropic Gaussians only. An atom the data say nothing about (e.g. a Gaussian outside every
    view) gets infinite deviations; where a whole matrix is singular otherwise, the next kind stands
    in for it."""
    views = _views_of(views, corrections)
    params = {name: p.detach().double() for name, p in cloud.params.items()}
    models = []
    shape = None if cloud.shape_params is None else {k: v.detach().double() for k, v in cloud.shape_params.items()}
    for part in views.split(chunk):
        model = project(params, part, shape=shape)
        if corrections.has_background:
            model = model + corrections.background_of(part.indices).double()
        models.append(model)
    model = torch.cat(models)
    data = measured[views.indices].double()
    residual_variance = None if noise.is_likelihood else float((data - model).square().mean())
    inverse_variance = 1.0 / noise.variance(model, residual_variance)
    if views.gains is not None:  # the atoms' derivatives are times the gain (the background's coefficients
        # over it are parameters of the same model; the positions' marginals do not change)
        inverse_variance = inverse_variance * views.gains[:, None, None].square()
    atoms = (params["positions"], params["log_sigmas"].exp(), params["log_weights"].exp())
    geometry = (views.rotations, views.offsets, views.pixel_size, inverse_variance)
    curvature = torch.zeros(cloud.count, 2) if prior is None else prior.curvature()

    def marginal_deviations(rows: np.ndarray) -> np.ndarray:
        """(len(rows), 3) marginal deviations of the atoms ``rows``, the others held known."""
        index = torch.from_numpy(rows)
        matrix = fisher_matrix(
            *(a[index] for a in atoms), *geometry, linear=corrections.basis, window=cloud.window, halo=cloud.halo()
        )
        diagonal = np.zeros(matrix.shape[0])
        diagonal[: 5 * len(rows)] = np.pad(curvature[index].double().numpy(), ((0, 0), (3, 0))).reshape(-1)
        matrix[np.diag_indices_from(matrix)] += diagonal
        return np.sqrt(np.clip(marginal_position_variances(matrix, len(rows)), 0.0, None))

    if cloud.count <= full_limit:
        try:
            return torch.from_numpy(marginal_deviations(np.arange(cloud.count))).float(), "marginal"
        except np.linalg.LinAlgError:  # parameters the data cannot tell apart: each atom's own block
            pass
    blocks = fisher_blocks(*atoms, *geometry, window=cloud.window, halo=cloud.halo())
    blocks[:, 3:, 3:] += torch.diag_embed(curvature.to(blocks))
    own = position_covariances(blocks).diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt()
    rows, middle = band_rows(atoms[0].numpy())
    limit = 3 * full_limit if band_limit is None else band_limit
    if cloud.count > full_limit and middle.sum() >= BAND_MINIMUM and len(rows) <= limit:
        try:
            ratio = marginal_deviations(rows)[middle] / own[rows[middle]].numpy()
        except np.linalg.LinAlgError:
            ratio = np.zeros((0, 3))
        ratio = ratio[np.isfinite(ratio).all(axis=1)]
        if len(ratio) >= BAND_MINIMUM:
            return (own * torch.from_numpy(np.median(ratio, axis=0))).float(), "scaled own block"
    return own.float(), "own block"
