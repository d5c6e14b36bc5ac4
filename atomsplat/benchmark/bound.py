"""The physical floor of a low-dose case: the Cramer-Rao bound of the atom positions at the true atoms.

For counts the Poisson Fisher information of the atoms' parameters is known exactly
(:mod:`atomsplat.render.fisher`); its inverse bounds the covariance of any unbiased estimate of the
positions. The benchmark reports one number per case beside the RMSE of the methods,

    crb = sqrt( mean over matched atoms of (sigma_x^2 + sigma_y^2 + sigma_z^2) )   (A),

with sigma the Cramer-Rao standard deviations of the matched atoms evaluated at the TRUE positions:
a copy of atomsplat's fitted cloud with each matched Gaussian moved to its true atom
(:func:`atomsplat.analysis.matching.match_atoms`, the same matching as the scores), through
:func:`atomsplat.model.refinement.position_uncertainties` (the whole Fisher matrix, with the
correlations of all Gaussians, their weights and widths and every projection's pedestal, up to the
model's ``full_uncertainty_limit`` atoms; each atom's own block, a lower bound, above it).

Approximation: only the positions are the truth's. The weights, widths and atom shape (core and
halo), the pedestal, the unmatched Gaussians and any shifts are atomsplat's fitted values, not
the simulation's (the true atoms' footprints are abTEM potentials, which no Gaussian reproduces
exactly), and the halo's fraction and ratio count as known. So the bound is that of the fitted
model's parametrisation at the true positions, a close stand-in for the simulation's own. Where
the model ties weights and widths to species (:mod:`atomsplat.model.species_prior`), the prior's
curvature joins the information, as in the model's own uncertainties: it is information the
estimate uses, and without it the fit's RMSE fell below the "bound" (2 nm Si at 1.6e4 e/A^2: 17 pm
against 20 pm from the data alone, 14 pm with the prior).
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch

from atomsplat.analysis.matching import match_atoms
from atomsplat.model.refinement import position_uncertainties


def truth_bound(
    cloud,
    corrections,
    measured: torch.Tensor,
    views,
    noise,
    atoms: np.ndarray,
    true_positions: np.ndarray,
    full_limit: int = 1000,
    prior=None,
) -> Optional[float]:
    """The case's Cramer-Rao bound at the true atoms (module docstring), A; None when no atom matches.

    Args:
        cloud: the fitted :class:`atomsplat.model.cloud.AtomCloud` (isotropic; not changed).
        corrections, measured, views, noise, full_limit: as
            :func:`atomsplat.model.refinement.position_uncertainties` (the fit's background,
            projections (N, H, W), training views and data term).
        atoms: (K,) indices into the cloud of the Gaussians that are atoms (the ones scored).
        true_positions: (T, 3) the true atoms, A, sample frame.
        prior: the model's fitted :class:`atomsplat.model.species_prior.SpeciesPrior`, or None.
    """
    atoms = np.asarray(atoms, dtype=int)
    found = cloud.positions.detach().cpu().double().numpy()[atoms]
    pred, true, _ = match_atoms(found, np.asarray(true_positions, dtype=float))
    if len(pred) == 0:
        return None
    index = torch.as_tensor(atoms[pred])
    at_truth = copy.deepcopy(cloud)
    with torch.no_grad():
        positions = at_truth.params["positions"]
        positions[index] = torch.as_tensor(np.asarray(true_positions)[true]).to(positions)
    sigmas, _ = position_uncertainties(
        at_truth, corrections, measured, views, noise, full_limit=full_limit, prior=prior
    )
    return float(sigmas[index].double().square().sum(dim=1).mean().sqrt())


def model_truth_bound(model, true_positions: np.ndarray) -> Optional[float]:
    """:func:`truth_bound` of a trained :class:`atomsplat.model.atomsplat_model.AtomSplatModel` that
    ran its final pass (its atoms: :meth:`~atomsplat.model.atomsplat_model.AtomSplatModel.atom_mask`)
    on all its training projections."""
    if not bool(model.finished):
        raise ValueError("the model has not run its final pass: its Gaussians are not final atoms")
    atoms = np.flatnonzero(model.atom_mask(model.cloud.detached()).cpu().numpy())
    views = model.series_views(model.train_indices)
    return truth_bound(
        model.cloud, model.corrections, model.measured, views, model.noise, atoms, true_positions,
        model.config.full_uncertainty_limit, model.fitted_prior(),
    )  # fmt: skip
