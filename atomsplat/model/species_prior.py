"""Atoms of one element are alike: a prior that ties each atom's weight and width to its species'.

The integrated weight of an atom (its ADF cross-section, or its integrated projected potential)
and its width (its potential blurred by the probe and thermal motion) are properties of its
element, up to a small spread. With the species assigned from the weights (exact 1-D k-means of
log-weight into the elements the dataset names, :func:`atomsplat.analysis.species.label_by_weight`),
the prior is Gaussian in log space around each species' mean:

    -log p = sum over atoms a of (log w_a - mean_s(a))^2 / (2 tau_w^2) + (log sigma_a - mean'_s(a))^2 / (2 tau_s^2)

in nats, added to the negative log-likelihood. At low dose a free weight and width per atom cost
two degrees of freedom the counts cannot pay for: a Gaussian fitting a noise blob shrinks to a
faint, narrow one, and a real atom's position is correlated with its poorly known width. Tied,
every atom of a species has nearly the same shape, so positions carry the data's information.
The labels and means are fitted to the atoms density control has decided, before the final
refinement (the default), or, tied in training as well, at every density pass and held between.

A dataset that names no elements gets the width's term alone, with one mean for all atoms: an
atom's image is the probe's, blurred a little by the atom, so widths hardly differ between elements
(the 2 nm SiGeSn particle at 8e3 e/A^2, abTEM's atoms tied by species: Sn 0.568, Ge 0.574, Si
0.592 A), while weights do (Z^1.7). Untied, a Gaussian that fits a few pixels' noise shrinks to the
narrowest width allowed and buys its price there (docs/lowdose.md, "Another simulator").
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from atomsplat.analysis.species import label_by_weight


class SpeciesPrior:
    """The prior of the module docstring for a set of Gaussians.

    Args:
        elements: the species present (chemical symbols), as the dataset names them; empty: one
            class of all atoms, whose widths alone are tied (their weights stay free).
        weight_spread: tau_w, the spread of log-weight within a species.
        width_spread: tau_s, the spread of log-width within a species.
    """

    def __init__(self, elements: Sequence[str], weight_spread: float = 0.1, width_spread: float = 0.05):
        self.elements = list(elements)
        self.weight_spread = float(weight_spread) if self.elements else math.inf
        self.width_spread = float(width_spread)
        self.members: Optional[torch.Tensor] = None  # (K,) bool: the Gaussians the prior holds
        self.labels: Optional[torch.Tensor] = None  # (K,) long species index
        self.means: Optional[torch.Tensor] = None  # (S, 2) mean log-weight and log-width per species

    @torch.no_grad()
    def update(self, log_weights: torch.Tensor, log_widths: torch.Tensor, members: torch.Tensor) -> None:
        """Assign species to the Gaussians ``members`` (K,) bool (the atoms, not diffuse ones) from
        their log-weights (K,), and set each species' mean log-weight and log-width (K,)."""
        self.members = members.clone()
        chosen = torch.nonzero(members).squeeze(1)
        labels = torch.zeros(len(log_weights), dtype=torch.long, device=log_weights.device)
        if self.elements and len(chosen) >= len(self.elements):
            symbols = label_by_weight(log_weights[chosen].exp().cpu().double().numpy(), self.elements)
            index = {symbol: k for k, symbol in enumerate(self.elements)}
            labels[chosen] = torch.as_tensor(np.array([index[s] for s in symbols]), device=labels.device)
        self.labels = labels
        values = torch.stack([log_weights, log_widths], dim=1).detach()
        classes = max(len(self.elements), 1)
        means = values.new_zeros(classes, 2)
        for k in range(classes):
            mine = members & (labels == k)
            if bool(mine.any()):
                means[k] = values[mine].mean(dim=0)
        self.means = means

    def ready(self, count: int) -> bool:
        """Whether the prior holds labels for ``count`` Gaussians (it does between two updates)."""
        return self.labels is not None and len(self.labels) == count

    def negative_log_prior(
        self, log_weights: torch.Tensor, log_widths: torch.Tensor, means: Optional[torch.Tensor] = None,
        rows: Optional[torch.Tensor] = None, relabel: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """The prior's negative log-density in nats (differentiable in all arguments: (K,), (K,) and
        ``means`` (S, 2), the species' means, the prior's own where None); ``rows`` (M,) long: the
        values are those of these Gaussians alone (M,), their terms the sum. ``relabel``: each
        Gaussian's term is that of the species it is nearest (the least of its terms over species),
        not of its label: a Gaussian that takes up a removed neighbour's counts may change species."""
        rows = slice(None) if rows is None else rows.to(self.labels.device)
        means = (self.means if means is None else means).to(log_weights)
        keep = self.members[rows].to(log_weights.device)
        if not relabel:
            means = means[self.labels[rows]][:, None, :]  # (M, 1, 2): each its own species
        return self._terms(log_weights, log_widths, means).min(dim=1).values[keep].sum()

    def nearest(self, log_weights: torch.Tensor, log_widths: torch.Tensor) -> torch.Tensor:
        """(K,) long: the species each Gaussian of log-weight and log-width (K,) is nearest, the one
        of its least term (:meth:`negative_log_prior` with ``relabel``)."""
        return self._terms(log_weights, log_widths, self.means.to(log_weights)).argmin(dim=1)

    def _terms(self, log_weights: torch.Tensor, log_widths: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """(K, S) nats: each Gaussian's term for each species of ``means`` ((S, 2), or (K, 1, 2) its own)."""
        weight_term = ((log_weights[:, None] - means[..., 0]) / self.weight_spread).square()
        width_term = ((log_widths[:, None] - means[..., 1]) / self.width_spread).square()
        return 0.5 * (weight_term + width_term)

    def curvature(self) -> torch.Tensor:
        """(K, 2) the prior's second derivatives by each Gaussian's log-weight and log-width (the
        means held), what it adds to the Fisher information's diagonal; 0 outside the members."""
        curve = torch.tensor([self.weight_spread**-2, self.width_spread**-2])
        return self.members.float()[:, None].cpu() * curve[None, :]
