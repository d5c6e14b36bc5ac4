"""The density strategy: when and how Gaussians are merged, pruned, split, duplicated and born.

Like gsplat's ``DefaultStrategy``, it keeps its own statistics (each Gaussian's mean position
gradient), decides from the training step what a pass does, edits the atom cloud's parameters with
the pure operations of :mod:`atomsplat.model.density`, moves the optimizers' state along with the
parameters, and returns a :class:`RefineRecord` of what happened; logging and the viewer are the
caller's business. No nerfstudio import.

The schedule (steps counted from the start of training, of ``total_steps`` in all):

- every ``refine_every`` steps: merge clusters closer than ``merge_distance`` (the paper's
  minimum-distance prior), then keep only the Gaussians the data call for (``selection``):
  "evidence" keeps a Gaussian when removing it would raise the negative log-likelihood by more
  than the Bayesian information criterion's price of its parameters, ``(k / 2) log n`` for k
  parameters and the n pixels it touches (a threshold-free test that scales with dose, for data
  whose likelihood is known: counts), in rounds that never remove two close Gaussians at once
  (:meth:`DensityStrategy.keep`); "weight" prunes Gaussians lighter than ``prune_fraction``
  of the median (the paper's rule, for data of unknown noise level);
- until ``split_until`` x total: split Gaussians wider than ``split_width`` x the median width
  (one Gaussian on several atoms); under evidence selection the two copies go along the direction
  in which stretching the Gaussian lowers the negative log-likelihood most
  (:meth:`DensityStrategy.split_directions`: towards the atoms it half covers), else in a random
  direction. On the 5.5 nm Si particle at 8e3 e/A^2 (4,606 atoms, 2026-12-06) random directions
  left copies across the bond that later passes merged back (steps 1,600-2,400, after duplication:
  0.38 merged per split) and the run ended at TPR 0.698 / FPR 0.102; along the bond 0.23 merged
  per split and 0.756 / 0.091 (docs/lowdose.md, "Splits along the bond");
- until ``densify_until`` x total: duplicate the ``densify_fraction`` with the largest mean
  position gradient (the paper's densification), the two copies 1.1 x ``merge_distance`` apart so
  that they survive the next merge unless they come back to one atom (in random directions, or as splits
  under evidence selection);
- every ``birth_every`` steps until ``split_until`` x total: add Gaussians where the residual shows
  atoms that no Gaussian explains: every local maximum of a search's score
  (:meth:`DensityStrategy.birth_map`) above its threshold that is ``merge_distance`` from all
  Gaussians becomes one. Under evidence selection (a known likelihood) the search is by default the
  score test of one more Gaussian of the median width at each point of a grid of ``birth_spacing``
  (:func:`atomsplat.model.density.matched_filter`: the residual weighted by each pixel's inverse
  variance and filtered by the footprint, back-projected, over the square root of its information),
  at least ``birth_significance`` standard deviations; the newborn gets the weight the test
  estimates, and the next pass decides whether it stays. The score test holds the other atoms fixed:
  in a thick particle, where neighbours have taken part of a missing atom's signal and the misfit of
  thousands of fitted atoms streaks every back-projection, its strongest points are mostly
  elsewhere. ``birth_search="reconstruction"`` searches instead the maxima of a reconstruction of
  the residual (a 5-pass SIRT, the model's), smoothed by a Gaussian of the median width, at least
  ``birth_significance`` standard scores of its robust noise, each newborn with the score test's
  weight. Fitted from the truth less 20 % (``benchmarks/birth_search.py``), at 5 standard scores: 2
  nm Si at 8e3 e/A^2 (38 missing), the score test 19 pass, 18 at missing atoms; the reconstruction
  31, all 31. 9 nm Si (4,333 missing), the score test 96, 82; the reconstruction 1,479, 1,286. But
  as training's births on the 2 nm low-dose preset (2026-12-04, TPR / FPR) it lost light atoms in
  SiGeSn at 8e3 (seed 0: 0.948 / 0.006 against the score test's 0.983 / 0 the same day; seed 1:
  0.913 / 0.013 against 0.942 / 0.018) and left a false atom at 1.6e4 (FPR 0.006), while FePt at 8e3
  gained its last Fe atoms (1.000 against 0.979) and Si did not move: so it is not the default.
  Under weight selection the measured minus modelled projections are back-projected pixel by pixel
  on the same grid and a maximum must exceed five times the score's robust noise and
  ``birth_threshold`` x the median Gaussian's peak value, the strongest first, at most
  :data:`WEIGHT_BIRTH_GROWTH` of the Gaussians per pass. Reading single pixels with one noise level
  for the whole grid, that search is blind to a light atom beside heavy ones in counts: the Poisson
  noise of the heavy columns sets the level, and their misfit reads as high as the light atom (2 nm
  FePt at 8e3 e/A^2: 114 of the 143 Fe atoms were never born, scoring 0.99 at the median against a
  threshold of 1.75, the fitted Pt atoms 0.57, while every Fe atom pays its price: fitted from the
  truth, a median 171 nats, none below its price of about 26; ``benchmarks/evidence_depth.py``).

Gaussians wider than ``diffuse_width`` x the median width are diffuse signal (the atoms' long
tails), not atoms: they stay in the model, unmerged and unsplit, and are not reported as atoms.
Under weight selection (float data) the model removes those still diffuse after its final
refinement and refines again (:meth:`remove_diffuse`), so that the atoms under them take their
signal back: left in, they took it unevenly and blurred the species (HEA particle, all angles,
full size: species accuracy 0.869). They are removed only then: in the missing wedge many are
atoms not yet resolved, which the final refinement narrows into atoms (quick FePt particle,
wedge: 53 diffuse Gaussians before it; removed before it, TPR 0.91 instead of 0.99). The
background is held in that second refinement (the diffuse signal is the sample's: re-solved, the
pedestal took it). Some diffuse Gaussians stood for atoms, and in the second refinement some atoms
widen into diffuse ones to take the removed signal: so births follow, where the residual shows
atoms missing, each round refined again until none is born (at most :data:`FINAL_BIRTH_ROUNDS`).
On the quick FePt particle in the wedge (800 steps, 2 and 1 threads, each from its checkpoint
before the final refinement; TPR / RMSE / species) the diffuse Gaussians kept gave 0.983 / 0.053 A
/ 0.954 and 0.969 / 0.066 / 0.946, removed 0.972 / 0.070 / 0.939 and 0.955 / 0.097 / 0.865,
removed with births 0.990 / 0.050 / 0.933 and 0.979 / 0.057 / 0.922; the quick HEA particle (all
angles, wedge) has no births. Without merging (the ablation) they stay: there the refinement
widens the second Gaussian on an atom into a diffuse one, and removing it would do merging's work.
Under evidence selection (counts) they stay; their removal is not measured there. There, after the
final refinement, births search the converged residual by the score test at
:data:`FINAL_BIRTH_SIGNIFICANCE` standard deviations, not ``birth_significance``: during training a
lower threshold would chase noise, but now each newborn is refined with all the atoms and must then
pay its price in the next pass's evidence test like every other Gaussian, so the data, not the
threshold, decide. An atom whose neighbours took part of its signal scores low at fixed neighbours
(2 nm Si at 8e3 e/A^2: one missing atom was the score's global maximum, 3.8, against 5) but pays
its price several times over once they give it back. But at 1.6e4 e/A^2 the converged residual of
the same particle shows the abTEM atoms' shape beside some atoms, and a Gaussian born there makes a pair with the atom's
own (1.26-1.47 A apart, each of 0.75 x the median weight) that fits the shape better than one
Gaussian, so the evidence test keeps it (FPR 0 -> 0.019, RMSE 13.4 -> 15.7 pm): a newborn that
ends closer than :data:`FINAL_BIRTH_SEPARATION` x ``merge_distance`` to another Gaussian is removed
(:meth:`DensityStrategy.remove_crowded`), and the rest refined again. In the low-dose preset
(docs/lowdose.md) Si went at 8e3 from 0.985 / 0.005 / 25.2 pm to 1.000 / 0 / 24.1 pm and stayed at 1.6e4
and 1.6e5, FePt at 8e3 from 0.969 / 0 / 13.8 pm to 0.979 / 0 / 13.7 pm, SiGeSn at 8e3 from 0.902 /
0.006 / 16.4 pm to 0.977 / 0.006 / 16.8 pm; about 3 minutes more per Si run. At the higher doses of
FePt and SiGeSn nothing moved: every newborn failed its price (FePt at 1.6e5: 46, 46 and 76 born in
the three rounds, all removed), time spent for nothing. So a round whose newborns the next pass
removes all is the last (that pass gives none birth: the next round would search the same residual):
FePt at 1.6e5 then stops after one round (41 born, 2 crowded, 39 removed) at the same 1.000 / 0 /
2.7 pm, 526 s (one thread, beside a test run) against 1,308 s, and Si at 8e3, whose rounds each keep
some (5, 8 and 7 born), is unchanged: 1.000 / 0 / 24.0 pm. Where species are tied, a round's
newborns stay out of the species prior until the next pass has tested them
(:meth:`atomsplat.model.atomsplat_model.AtomSplatModel.fitted_prior`): pulled to their species'
weight at once, newborns at noise maxima misfit the data around them, and each round's births chased
that misfit (a 5.5 nm Si particle at 1.6e5 e/A^2, all 4,606 atoms found before them: 96, 660 and
1,228 born, FPR 0.216 after the third); left free, the 98 born there shrank to 0.01-0.02 of an
atom's weight, none paid its price, and the births ended after one round at 4,606 Gaussians, FPR 0
(docs/lowdose.md, "Births after the final refinement over a larger particle").
The last ``1 - split_until`` of the steps polish a fixed set while merging and selection go on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Literal, Optional, Tuple

import numpy as np
import torch
from ase.data import atomic_numbers, covalent_radii
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from torch.nn import Parameter

from atomsplat.analysis.tracing import select_separated
from atomsplat.model import density
from atomsplat.render.projector import backproject_points

DEFAULT_MERGE_DISTANCE = 1.6
"""A: the minimum distance of atoms in float data (measured on Au, FePt, Pt-Ni, Pd and HEA particles)."""

FINAL_BIRTH_ROUNDS = 3
"""Birth passes at most after the final refinement, each followed by a refinement (module docstring;
the quick FePt particle in the wedge needed two after the diffuse removal, the second finding 1 or 4
atoms; the 2 nm Si particle at 8e3 e/A^2 used all three at 3 standard deviations, 5, 9 and 6 born,
200 Gaussians before and 202 after; at 2, 53 and 74 born, and the third round none. Three more
rounds at 2 on the finished 5.5 nm Si particle at 8e3 took TPR from 0.827 to 0.838 in 22 min on one
thread: docs/lowdose.md)."""

FINAL_BIRTH_SIGNIFICANCE = 2.0
"""Evidence selection: the births' score test after the final refinement, in standard deviations
(module docstring). The threshold only proposes; each newborn then pays its price or goes. At 3 the
5.5 nm Si particle at 8e3 e/A^2 (4,606 atoms, 2026-12-06; ``ns-train atomsplat --data
data/si5nm_8000``, then atomsplat-export and atomsplat-eval) ended at 0.7605 / 0.0849 / 34.9 pm:
atoms deep inside, whose neighbours hold part of their counts, score below 3 with the neighbours
held and were never proposed, though 639 of 696 such atoms pay their price once placed. At 2: 1,118, 1,060 and 1,589
born in the three rounds, 4,090 atoms, TPR 0.827 / FPR 0.069 / 33.8 pm. In the 2 nm low-dose preset
(``atomsplat-benchmark --preset lowdose``) the rounds propose 51-100 Gaussians each, nearly all
noise that fails its price: Si kept every row, FePt at 8e3 found two Fe atoms more (0.993), SiGeSn
at 8e3 two light Si atoms fewer (0.971 / 0.006), and the preset took 18.9 min against 12.9."""

WEIGHT_BIRTH_GROWTH = 0.5
"""Weight selection: a pass gives birth to at most this fraction of its narrow Gaussians, the
strongest maxima first. Its threshold follows the median Gaussian's peak and no noise level bounds
it, so a misfit of the whole model reads as atoms missing everywhere: handed a tied fit's end at
9 nm (19,133 atoms, 2026-12-05), one pass gave birth to 53,363 Gaussians. The largest share a
healthy run gave birth to was 57 for 216 (0.26), the quick preset's FePt in the wedge at step 300,
216 narrow Gaussians for 287 atoms (``atomsplat-benchmark --preset quick``)."""

REMOVAL_ROUNDS = 4
"""Evidence selection: rounds of removal per pass at most (:meth:`DensityStrategy.keep`); what is still
below its price after them is tested again in the next pass."""

PAIR_SEPARATION = 1.5
"""Evidence selection: a Gaussian closer than this x ``merge_distance`` to another may hold counts
that its neighbours would take up if they moved, and is tested for removal with them refitted
(:meth:`DensityStrategy.crowded`). Atoms are rarely so close: the minimum distance follows half the
shortest bond (Si: 1.22 A, the test up to 1.83 A), and the simulated amorphous Si particles'
closest atoms are 2.21-2.23 A apart, their Gaussians at 8e3 e/A^2 down to 1.76 A. Measured in
the views' resolution (:func:`atomsplat.geometry.resolution_stretch`): in a missing wedge one atom's
counts, elongated along the beam, can take two Gaussians straddling it along the beam, further
apart (2 nm Si, -70:70:3, 1.6e4 e/A^2, 2026-12-06: 1.99 A, 1.95 of it along z, each of 0.8 x the
median weight and 0.77 and 1.28 A from the atom: a false atom and a missed one; measured in the
views' resolution 1.72 A, tested and removed, 0.995 / 0.0099 / 16.1 pm -> 1.000 / 0 / 15.9 pm; at
8e3 5 tested, none removed, 0.995 / 0 / 30.3 pm both). A full tilt range is measured as it is.
Where the minimum distance follows the bonds (:func:`bonded`), each pair's is that of the bond its
two species make (:func:`bond_halves`, species by weight): in SiO2 the minimum distance is O's (an
O-O bond, 0.73 A), but a Si and an O closer than 1.46 A are as implausible (Si-O bonds 1.57 A and
more). On the 2 nm SiO2 particle at 1.6e4 e/A^2 (2026-12-07) most false Gaussians sat 1.1-1.4 A
from another, beside a Si atom, out of reach of the one distance: with each pair's, 53 tested and 42 removed (38
false, 4 O atoms), against 28 (23 and 5), FPR 0.088 -> 0.039 (docs/lowdose.md, "Crowded pairs by
their species' bond")."""

CROWDED_REACH = 3.0
"""Evidence selection: a crowded Gaussian is tested with the Gaussians within this x
``merge_distance`` of it refitted (Si: 3.7 A, the first shell of neighbours and more), in windows
of the views widened by as much for them to move in."""

CROWDED_LIMIT = 1000
"""Evidence selection: crowded Gaussians are tested only up to this many Gaussians. Beyond, in a
thicker particle, the test does not tell atoms from false Gaussians: on the 5.5 nm Si particle at
8e3 e/A^2 (2026-12-06, 3,871 Gaussians) it tested 73 and removed 17, TPR 0.7605 -> 0.7571, FPR
0.0849 -> 0.0853; of the 42 tested that were an atom's only Gaussian (within 0.6 A of it, the next
Gaussian over 1.2 A away), 9 rose less than :data:`CROWDED_RISE`."""

CROWDED_RISE = 10.3
"""Evidence selection: a crowded Gaussian stays out where the data term, refitted without it, rose
by less than this (nats): the likelihood-ratio test of its 5 parameters at the 1e-3 level (half the
chi-square's 0.999 quantile, 20.5). Not the BIC price: with their neighbours refitted, atoms cost
less than it. On the 2 nm Si particle at 8e3 e/A^2 (2026-12-06), with the neighbours within
:data:`CROWDED_REACH` refitted and species tied, two crowded atoms 16.4 and 18.5 nats against a price
of 25.6, a false Gaussian between two atoms -0.5, the second Gaussian on an atom 7.4 (refitting all
Gaussians gave 10.6, 10.8, 3.8 and under 10.3; species not tied: 9.5, 9.5, 4.1 and 11.8)."""

FINAL_BIRTH_SEPARATION = 1.3
"""Evidence selection: a Gaussian born after the final refinement that ends closer than this x
``merge_distance`` to another Gaussian is a second Gaussian on one atom, and is removed (module
docstring; 2 nm Si, merge distance 1.22 A: such pairs 1.26-1.47 A apart, atoms found 1.76-2.18 A
from their neighbours)."""


def minimum_distance(series, config) -> float:
    """The merge distance, A: the config's, or, where it is None, 0.55 x the shortest bond the
    dataset's elements can make (twice the smallest covalent radius, ASE's table; Si: 1.22 A) for
    counts whose dataset names them, and :data:`DEFAULT_MERGE_DISTANCE` otherwise. Counts need the
    margin (the Gaussians wander more during training at low dose): on 2 nm amorphous Si (bonds from
    2.2 A) at 1.6e4 e/A^2, 1.6 A gave TPR 0.95 / FPR 0.015, 1.2 A 1.00 / 0.005."""
    if not bonded(series, config):
        return DEFAULT_MERGE_DISTANCE if config.merge_distance is None else float(config.merge_distance)
    return float(bond_halves(series.elements).min()) * 2.0


def bonded(series, config) -> bool:
    """Whether the minimum distance follows the bonds of the dataset's elements
    (:func:`minimum_distance`): counts whose dataset names its elements, no distance set."""
    return config.merge_distance is None and bool(series.counts) and bool(series.elements)


def bond_halves(symbols) -> np.ndarray:
    """(N,) A: half the minimum distance between two atoms of each symbol's element, 0.55 x its
    covalent radius (ASE's table), at most half :data:`DEFAULT_MERGE_DISTANCE`; two atoms' minimum
    distance is the sum of their halves (0.55 x the bond their elements make; :meth:`DensityStrategy.crowded`)."""
    radii = np.array([covalent_radii[atomic_numbers[e]] for e in symbols], dtype=float)
    return np.minimum(0.55 * radii, 0.5 * DEFAULT_MERGE_DISTANCE)


@dataclass
class DensityOptions:
    """Options of the density strategy (lengths in A)."""

    refine_every: int = 100
    """Steps between density-control passes."""
    densify_until: float = 0.5
    """Fraction of the training steps after which duplication by gradient stops."""
    split_until: float = 0.8
    """Fraction of the steps after which nothing is split nor born (merging and pruning go on)."""
    densify_fraction: float = 0.05
    """Fraction duplicated per pass (largest position gradient), 1.1 x ``merge_distance`` apart."""
    split_width: float = 1.3
    """Gaussians wider than this many times the median width cover several atoms: they are split."""
    diffuse_width: float = 2.0
    """Gaussians wider than this many times the median width are diffuse signal, kept but not atoms."""
    selection: Literal["auto", "evidence", "weight"] = "auto"
    """Which Gaussians stay: "evidence" (likelihood and BIC), "weight" (light ones pruned); "auto": evidence
    where the data term is a likelihood (counts)."""
    prune_fraction: float = 0.15
    """"weight" selection: Gaussians lighter than this fraction of the median weight are removed."""
    birth_every: int = 300
    """Steps between births (0: never): maxima of the back-projected residual far from all Gaussians."""
    birth_threshold: float = 0.3
    """Weight selection: births where the residual tops this x the median peak (and 5 x noise)."""
    birth_significance: float = 5.0
    """Evidence selection: births where the search's standard score tops this many sigma."""
    birth_search: Literal["score", "reconstruction"] = "score"
    """Evidence selection: training's births by the score test of one more atom, or at the maxima of
    a reconstruction of the residual (which ranks missing atoms better in a thick particle, but lost
    light atoms in SiGeSn on the 2 nm low-dose preset)."""
    birth_views: int = 45
    """Training projections (evenly spread) back-projected for births."""
    birth_spacing: float = 0.5
    """Spacing of the grid on which the residual is back-projected, A."""
    merge: bool = True
    """Minimum-distance prior: merge Gaussians closer than ``merge_distance`` (ablation: False)."""
    merge_distance: float = DEFAULT_MERGE_DISTANCE
    """Minimum distance between atoms, A."""
    merge_mode: Literal["weighted", "mean"] = "weighted"
    """"weighted": total weight at the weight-averaged centre; "mean": the paper's plain means."""
    merge_neighbours: int = 20
    """Above ``merge_neighbours_above`` Gaussians only this many nearest neighbours are searched."""
    merge_neighbours_above: int = 10000


@dataclass
class RefineRecord:
    """What one density pass did: Gaussians before and after, and how many were merged away,
    pruned, split or duplicated, and born; how many of those after are diffuse (not atoms).
    ``tpr`` and ``fpr`` are for the caller to fill in when it knows the true atoms; ``final``
    marks the last pass of a training run; ``newborn_kept``: of the previous pass's births, how
    many this pass kept (where it was told of them)."""

    step: int
    before: int
    merged: int
    pruned: int
    split: int
    born: int
    after: int
    diffuse: int = 0
    final: bool = False
    tpr: Optional[float] = None
    fpr: Optional[float] = None
    newborn_kept: Optional[int] = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


Residuals = Callable[[int], Tuple[torch.Tensor, "object", Optional[torch.Tensor]]]
"""``residuals(count)``: measured minus modelled projections (V, H, W) of about ``count`` training
projections spread evenly over the series, their :class:`atomsplat.model.cloud.Views`, and the
variance of every pixel (V, H, W) where the noise model knows it (counts), else None."""


Reconstruct = Callable[[torch.Tensor, "object"], Tuple[np.ndarray, np.ndarray, float]]
"""``reconstruct(images, views)``: a signed volume (nx, ny, nz) reconstructed from residual images
(V, H, W) of :class:`atomsplat.model.cloud.Views` ``views``, the position (3,) A of its voxel
(0, 0, 0) and the voxel size, A (the model's business: it knows the tilt geometry)."""


@dataclass
class BirthMap:
    """One birth search's score on a grid (:meth:`DensityStrategy.birth_map`).

    Attributes:
        score: (nx, ny, nz); atoms are missing at its maxima above ``threshold``.
        origin: (3,) A, the position of grid point (0, 0, 0); the points lie ``spacing`` A apart.
        spacing: A.
        threshold: the score a maximum must exceed.
        weights: ``weights(indices, params)``: the weights (M,) of newborns at flat C-order grid
            points ``indices`` (M,), given the Gaussians ``params`` that the pass keeps.
    """

    score: np.ndarray
    origin: np.ndarray
    spacing: float
    threshold: float
    weights: Callable[[np.ndarray, density.Params], np.ndarray]


@dataclass
class Evidence:
    """What the data say about Gaussians, in nats of negative log-likelihood (the model's business).

    Attributes:
        removal: ``removal(params)``: how much the negative log-likelihood of the training
            projections would grow without each Gaussian, the others held (K,), and the pixels each
            touches (K,) (:func:`atomsplat.render.footprints.removal_gains`).
        stretch: ``stretch(params, chosen)``: (M, 3, 3) how the negative log-likelihood changes with
            the covariance of each Gaussian of ``chosen`` (M,) long, all of ``params`` in the model
            (:func:`atomsplat.render.footprints.covariance_gradients`), or None.
    """

    removal: Callable[[density.Params], Tuple[torch.Tensor, torch.Tensor]]
    stretch: Optional[Callable[[density.Params, torch.Tensor], torch.Tensor]] = None


class DensityStrategy:
    """Density control of an :class:`atomsplat.model.cloud.AtomCloud` (see the module docstring).

    Args:
        options: the schedule and thresholds.
        total_steps: training steps in all (from the first step of the first run, also on resume).
        generator: random directions of duplicated Gaussians.
        evidence: the model's evidence (what the data say about each Gaussian), for evidence selection.
        reconstruct: the model's :data:`Reconstruct`, for training's births under evidence selection.
    """

    def __init__(
        self,
        options: DensityOptions,
        total_steps: int = 0,
        generator: Optional[torch.Generator] = None,
        evidence: Optional[Evidence] = None,
        reconstruct: Optional[Reconstruct] = None,
    ):
        self.options = options
        self.total_steps = total_steps
        self.generator = generator
        self.evidence = evidence if options.selection != "weight" else None
        """The model's evidence function, or None: weight pruning."""
        self.reconstruct = reconstruct
        self._grad_sum: Optional[torch.Tensor] = None
        self._grad_steps = 0

    def reset_statistics(self, count: int, device) -> None:
        """Forget the accumulated gradients (after the Gaussians changed)."""
        self._grad_sum = torch.zeros(count, device=device)
        self._grad_steps = 0

    @torch.no_grad()
    def step_post_backward(
        self, cloud, optimizers: Dict[str, torch.optim.Optimizer], step: int, residuals: Optional[Residuals] = None
    ) -> Optional[RefineRecord]:
        """After a training step's backward pass and optimizer step: accumulate the position
        gradients and, every ``refine_every`` steps, run a density pass; returns its record or None."""
        grad = cloud.positions.grad
        if self._grad_sum is None or self._grad_sum.shape[0] != cloud.count:
            self.reset_statistics(cloud.count, cloud.positions.device)
        if grad is not None and grad.shape[0] == cloud.count:
            self._grad_sum += grad.norm(dim=1)
            self._grad_steps += 1
        o = self.options
        if step == 0 or step % o.refine_every != 0:
            return None
        split = step <= o.split_until * self.total_steps
        birth = split and o.birth_every > 0 and step % o.birth_every == 0
        return self.refine(
            cloud,
            optimizers,
            step,
            densify=step <= o.densify_until * self.total_steps,
            split=split,
            residuals=residuals if birth else None,
        )

    @torch.no_grad()
    def refine(
        self,
        cloud,
        optimizers: Dict[str, torch.optim.Optimizer],
        step: int,
        densify: bool = False,
        split: bool = False,
        residuals: Optional[Residuals] = None,
        final: bool = False,
        significance: Optional[float] = None,
        newborn: int = 0,
    ) -> RefineRecord:
        """One density pass: merge and prune; split wide Gaussians when ``split``; duplicate those
        with the largest mean position gradient when ``densify``; add Gaussians where atoms are
        missing when ``residuals`` is given (the residuals of the model as it was before the pass;
        under evidence selection at ``significance`` standard deviations, default ``birth_significance``),
        unless ``newborn`` > 0 (the last Gaussians are the previous pass's births) and this pass's
        merge and prune kept none of them (the record's ``newborn_kept``)."""
        o = self.options
        params = cloud.detached()
        before = len(params["positions"])
        scores = self._grad_sum / max(self._grad_steps, 1) if self._grad_sum is not None else torch.zeros(before)
        source = torch.arange(before, device=params["positions"].device)
        params, kept, merged, pruned = self._merge_and_prune(params)
        source, scores = _follow(source, kept, -1), _follow(scores.to(kept.device), kept, 0.0)
        newborn_kept = int((source >= before - newborn).sum()) if newborn > 0 else None
        search = None
        if residuals is not None and cloud.count > 0 and newborn_kept != 0:  # the cloud is as it was before the pass
            significance = o.birth_significance if significance is None else significance
            search = self.birth_map(cloud, residuals, self.birth_method(final), significance)
        widths = density.width_of(params)
        atoms = ~density.diffuse(params, o.diffuse_width)
        wide = (widths > o.split_width * widths.median()) & atoms
        chosen = torch.nonzero(wide).squeeze(1) if split else widths.new_zeros(0, dtype=torch.long)
        if densify:
            count = int(round(o.densify_fraction * int(atoms.sum())))
            ranked = torch.where(atoms, scores, torch.full_like(scores, -float("inf")))
            chosen = torch.unique(torch.cat([chosen, torch.topk(ranked, count).indices]))
        offset = torch.maximum(widths[chosen], widths.new_tensor(0.55 * o.merge_distance))
        params, new_source = density.duplicate(
            params, chosen, offset, self.generator, self.split_directions(params, chosen)
        )
        source = _follow(source, new_source, -1)
        born = 0
        if search is not None:
            narrow = params["positions"][~density.diffuse(params, o.diffuse_width)].cpu().numpy()
            found = density.residual_peaks(
                search.score, search.threshold, o.merge_distance, search.spacing, narrow, search.origin
            )
            if self.evidence is None:
                found = density.strongest(found, search.score, math.ceil(WEIGHT_BIRTH_GROWTH * len(narrow)))
            positions = density.grid_positions(found, search.score.shape, search.origin, search.spacing)
            log_weights = torch.from_numpy(np.log(search.weights(found, params)))
            params, new_source = density.append(params, torch.from_numpy(positions), log_weights)
            source, born = _follow(source, new_source, -1), len(found)
        self.install(cloud, optimizers, params, source)
        diffuse = int(density.diffuse(cloud.detached(), o.diffuse_width).sum())
        return RefineRecord(
            step, before, merged, pruned, len(chosen), born, cloud.count, diffuse,
            final=final, newborn_kept=newborn_kept,
        )  # fmt: skip

    @torch.no_grad()
    def remove_diffuse(self, cloud, optimizers: Dict[str, torch.optim.Optimizer]) -> int:
        """Remove the diffuse Gaussians from ``cloud`` (the optimizers follow) under weight selection
        with merging, after the final refinement (module docstring); returns how many."""
        if self.evidence is not None or not self.options.merge:
            return 0
        params = cloud.detached()
        narrow = torch.nonzero(~density.diffuse(params, self.options.diffuse_width)).squeeze(1)
        removed = cloud.count - len(narrow)
        if removed:
            self.install(cloud, optimizers, {name: values[narrow] for name, values in params.items()}, narrow)
        return removed

    @torch.no_grad()
    def remove_crowded(self, cloud, optimizers: Dict[str, torch.optim.Optimizer], newborn: int, distance: float) -> int:
        """Remove those of the last ``newborn`` Gaussians of ``cloud`` (a pass's births, appended last)
        that lie closer than ``distance`` (A) to another Gaussian (the optimizers follow); returns
        how many."""
        positions = cloud.positions.detach()
        count = cloud.count
        new = torch.arange(count - newborn, count, device=positions.device)
        gaps = torch.cdist(positions[new], positions)
        gaps[torch.arange(newborn), new] = float("inf")
        crowded = new[(gaps < distance).any(dim=1)]
        if len(crowded):
            keep = torch.ones(count, dtype=torch.bool, device=positions.device)
            keep[crowded] = False
            kept = torch.nonzero(keep).squeeze(1)
            self.install(cloud, optimizers, {name: values[kept] for name, values in cloud.detached().items()}, kept)
        return len(crowded)

    def close_pairs(
        self, params: density.Params, stretch: np.ndarray, halves: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """(P, 2) int: the pairs of narrow Gaussians closer than :data:`PAIR_SEPARATION` x their
        minimum distance (the sum of their ``halves`` (K,) A, :func:`bond_halves` of their species;
        None: ``merge_distance``), measured by ``stretch`` (3, 3)
        (:func:`atomsplat.geometry.resolution_stretch` of the views: in a missing wedge a pair along
        the beam counts closer), the closest (so measured, against their minimum distance) first."""
        narrow = torch.nonzero(~density.diffuse(params, self.options.diffuse_width)).squeeze(1).cpu().numpy()
        points = params["positions"].detach()[torch.as_tensor(narrow, device=params["positions"].device)]
        points = points.cpu().double().numpy() @ stretch
        half = np.full(len(narrow), 0.5 * self.options.merge_distance) if halves is None else halves[narrow]
        pairs = cKDTree(points).query_pairs(PAIR_SEPARATION * 2.0 * half.max(initial=0.0), output_type="ndarray")
        if len(pairs) == 0:
            return np.zeros((0, 2), dtype=np.int64)
        apart = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
        apart = apart / (half[pairs[:, 0]] + half[pairs[:, 1]])
        close = apart < PAIR_SEPARATION
        return narrow[pairs[close][np.argsort(apart[close], kind="stable")]]

    def crowded(
        self,
        params: density.Params,
        gains: torch.Tensor,
        stretch: np.ndarray,
        halves: Optional[np.ndarray] = None,
    ) -> torch.Tensor:
        """(R,) long: of each two Gaussians of :meth:`close_pairs` (``stretch``, ``halves``), the one
        whose removal costs less (``gains`` (K,) nats, the others held), the cheapest first and never
        both of a close pair: the Gaussians to test for removal with the rest refitted
        (:meth:`atomsplat.model.atomsplat_model.AtomSplatModel._refit_crowded`). Every such Gaussian
        is tested, however much it buys held: refitted, the crowded atoms of the 2 nm particles buy
        more than :data:`CROWDED_RISE` (docs/lowdose.md, "Close pairs relabelled")."""
        device = params["positions"].device
        pairs = self.close_pairs(params, stretch, halves)
        if len(pairs) == 0:
            return torch.zeros(0, dtype=torch.long, device=device)
        cost = gains.detach().cpu().numpy()
        weaker = np.where(cost[pairs[:, 0]] <= cost[pairs[:, 1]], pairs[:, 0], pairs[:, 1])
        neighbours = {}
        for i, j in pairs.tolist():
            neighbours.setdefault(i, []).append(j)
            neighbours.setdefault(j, []).append(i)
        removed = set()
        for i in sorted(set(weaker.tolist()), key=lambda i: cost[i]):
            if removed.isdisjoint(neighbours[i]):
                removed.add(i)
        return torch.as_tensor(sorted(removed), dtype=torch.long, device=device)

    def split_directions(self, params: density.Params, chosen: torch.Tensor) -> Optional[torch.Tensor]:
        """(M, 3) unit directions in which to split the Gaussians ``chosen`` (M,) long: where the
        evidence knows the likelihood's covariance gradient, the direction in which stretching each
        one lowers the negative log-likelihood most (the eigenvector of its gradient's least
        eigenvalue: towards the atom it half covers); else None (random directions)."""
        if self.evidence is None or self.evidence.stretch is None or len(chosen) == 0:
            return None
        gradients = self.evidence.stretch(params, chosen).double()
        return torch.linalg.eigh(gradients)[1][:, :, 0].to(params["positions"])

    def birth_method(self, final: bool) -> str:
        """The search of a pass's births (:meth:`birth_map`): under weight selection "residual";
        under evidence selection "score" after the final refinement, else ``birth_search``
        ("reconstruction" needs ``reconstruct``)."""
        if self.evidence is None:
            return "residual"
        if final or self.options.birth_search == "score":
            return "score"
        if self.reconstruct is None:
            raise ValueError("birth_search 'reconstruction' needs the model's reconstruction of the residual")
        return "reconstruction"

    def cleanup(self, params: density.Params) -> density.Params:
        """The merge-and-prune part of a pass on plain tensors (a model's copy), nothing else changed."""
        return self._merge_and_prune(params)[0]

    def keep(self, params: density.Params) -> torch.Tensor:
        """(K',) long indices of the Gaussians to keep (``selection``, module docstring).

        Under evidence selection the Gaussians below their price are removed in rounds, the gains
        measured again after each: of two closer than ``2 x merge_distance`` a round removes only the
        one that buys least (:func:`atomsplat.analysis.tracing.select_separated`, the greedy rule of
        atom tracing), since each one's gain holds the other in place. Two halves of one atom (a
        split's or a duplication's copies) each buy too little alone, but together the atom's whole
        signal. On the 5.5 nm Si particle at 8e3 e/A^2 (4,606 atoms; 2026-12-06, the pass at step
        2,100 from one checkpoint) removing all at once lost 98 atoms, 51 of them with their nearest
        Gaussian (within 2.5 A) removed too; in rounds 58, none so.
        The run with the defaults ends at TPR 0.698 / FPR 0.102 instead of 0.580 / 0.107 (docs/lowdose.md,
        "Removal in rounds"), the 2 nm low-dose preset within one atom of before."""
        if self.evidence is None:
            return density.prune(params, self.options.prune_fraction)[1]
        alive = torch.arange(len(params["positions"]), device=params["positions"].device)
        for _ in range(REMOVAL_ROUNDS):
            current = {name: values[alive] for name, values in params.items()}
            gains, touched = self.evidence.removal(current)
            margin = (gains.to(touched) - self.price(current, touched)).cpu()
            below = torch.nonzero(margin <= 0).squeeze(1)
            if len(below) == 0:
                break
            apart = select_separated(
                current["positions"][below].cpu().numpy(), -margin[below].numpy(), 2.0 * self.options.merge_distance
            )
            removed = torch.zeros(len(alive), dtype=torch.bool)
            removed[below[torch.from_numpy(apart)]] = True
            alive = alive[~removed.to(alive.device)]
        return alive

    @staticmethod
    def price(params: density.Params, touched: torch.Tensor) -> torch.Tensor:
        """BIC's price of one Gaussian in nats: half its parameters times the log of the pixels it touches."""
        per_gaussian = sum(math.prod(values.shape[1:]) for values in params.values())
        return 0.5 * per_gaussian * torch.log(touched.clamp_min(2.0))

    def _merge_and_prune(self, params: density.Params):
        """(params, kept, merged, pruned): ``kept`` maps each remaining Gaussian to the old one it
        is (-1 for a merged cluster)."""
        o = self.options
        before = len(params["positions"])
        kept = torch.arange(before, device=params["positions"].device)
        merged = 0
        if o.merge and before > 1:
            narrow = ~density.diffuse(params, o.diffuse_width).cpu().numpy()
            labels = np.arange(before) + before  # the diffuse Gaussians: clusters of their own
            labels[narrow] = density.cluster_labels(
                params["positions"].cpu().numpy()[narrow],
                o.merge_distance,
                o.merge_neighbours,
                o.merge_neighbours_above,
            )
            labels = np.unique(labels, return_inverse=True)[1]
            params, kept = density.merge(params, torch.from_numpy(labels).to(kept.device), o.merge_mode)
            merged = before - len(params["positions"])
        chosen = self.keep(params)
        params = {name: values[chosen] for name, values in params.items()}
        return params, kept[chosen], merged, before - merged - len(chosen)

    def birth_map(self, cloud, residuals: Residuals, method: str, significance: float) -> BirthMap:
        """Where atoms are missing, from ``birth_views`` residual projections of ``cloud``, by one of
        three searches (``method``):

        - "reconstruction" (training's births under evidence selection with ``birth_search``
          "reconstruction"): a signed reconstruction of the residual (``reconstruct``, the
          model's), smoothed by a Gaussian of the median width (the matched filter in the volume),
          over the Gaussians' bounding box (padded by ``merge_distance``; beyond it lie the
          reconstruction's edge artefacts), in standard scores of its robust noise (1.4826 x the
          median absolute deviation over that box); threshold ``significance``; a newborn gets the
          weight the score test below estimates at its place (a light atom is born light);
        - "score" (evidence selection: training's births by default, and after the final
          refinement): the score test of one more atom of the median width on a grid of
          ``birth_spacing`` A over the Gaussians' bounding box (padded by ``merge_distance``): the
          per-view score of the matched filter
          (:func:`atomsplat.model.density.matched_filter`) back-projected, over the square root of
          its information; threshold ``significance``; a newborn gets the weight the test estimates;
        - "residual" (weight selection): the residual back-projected unfiltered on the same grid
          (:func:`atomsplat.render.projector.backproject_points`; a missing atom scores about its
          peak value, data units); threshold ``birth_threshold`` x the median peak ``w / (2 pi
          sigma^2)`` of the Gaussians, at least five robust standard deviations of the score; a
          newborn gets the weight whose peak value explains the score.

        The score test reads every pixel with its own noise but holds the other atoms fixed: in a
        thick particle, where neighbours have taken part of a missing atom's signal and the misfit of
        thousands of fitted atoms streaks every back-projection, its strongest points are mostly not
        missing atoms, while the reconstruction's are (``benchmarks/birth_search.py``, module
        docstring)."""
        o = self.options
        images, views, variance = residuals(o.birth_views)
        width, halo = float(cloud.sigmas.detach().median()), cloud.halo()

        def back(values: torch.Tensor, points: np.ndarray) -> torch.Tensor:
            grid = torch.from_numpy(points).to(images)
            return backproject_points(values, views.rotations, views.offsets, views.pixel_size, grid)

        def score_test(points: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
            """The matched filter's score and information at ``points`` (M, 3), means over the views."""
            score, information = density.matched_filter(images, variance, width, views.pixel_size, halo)
            return back(score, points), back(information, points).clamp_min(1e-30)

        positions = cloud.positions.detach().cpu().numpy()
        low, high = positions.min(0) - o.merge_distance, positions.max(0) + o.merge_distance
        if method == "reconstruction":
            volume, origin, spacing = self.reconstruct(images, views)
            volume = gaussian_filter(volume, width / spacing)
            # the Gaussians' box only: outside it the reconstruction holds the edges' artefacts
            first = np.clip(np.ceil((low - origin) / spacing).astype(int), 0, np.array(volume.shape) - 1)
            last = np.clip(np.floor((high - origin) / spacing).astype(int), first, np.array(volume.shape) - 1)
            volume = volume[first[0] : last[0] + 1, first[1] : last[1] + 1, first[2] : last[2] + 1]
            origin = origin + spacing * first
            noise = max(_robust_sigma(volume), 1e-30)

            def estimated(indices: np.ndarray, params: density.Params) -> np.ndarray:
                score, information = score_test(density.grid_positions(indices, volume.shape, origin, spacing))
                return (score / information).clamp_min(1e-30).cpu().double().numpy()

            return BirthMap(volume / noise, origin, spacing, significance, estimated)
        shape, points = density.grid_points(low, high, o.birth_spacing)
        if method == "score":
            score, information = score_test(points)
            standard = (score * math.sqrt(len(images)) / information.sqrt()).cpu().numpy().reshape(shape)
            estimates = (score / information).clamp_min(1e-30).cpu().double().numpy()
            return BirthMap(standard, low, o.birth_spacing, significance, lambda indices, params: estimates[indices])
        score = back(images, points).cpu().numpy().reshape(shape)
        peaks = cloud.weights.detach() * density.peak_density(cloud.sigmas.detach(), halo)
        noise = _robust_sigma(score)

        def explaining(indices: np.ndarray, params: density.Params) -> np.ndarray:
            area = 1.0 / float(density.peak_density(density.width_of(params).median(), halo))
            return score.reshape(-1)[indices] * area

        threshold = max(o.birth_threshold * float(peaks.median()), 5.0 * noise)
        return BirthMap(score, low, o.birth_spacing, threshold, explaining)

    def install(self, cloud, optimizers: Dict[str, torch.optim.Optimizer], params: density.Params, source) -> None:
        """Give ``cloud`` new parameters; each optimizer's state follows ``source`` (K_new,) (the old
        Gaussian each new one continues, -1 for fresh state), and the statistics start afresh."""
        old = dict(cloud.params.items())
        new = cloud.install(params)
        transplant(optimizers, old, new, source)
        self.reset_statistics(cloud.count, cloud.positions.device)


def transplant(
    optimizers: Dict[str, torch.optim.Optimizer],
    old: Dict[str, Parameter],
    new: Dict[str, Parameter],
    source: torch.Tensor,
) -> None:
    """Point each optimizer (by parameter name) from its ``old`` parameter to the ``new`` one; Adam's
    moments follow ``source`` (K_new,) long (-1: zero moments). Optimizers absent from the dict are
    skipped (a model used outside training)."""
    inherit = source >= 0
    index = source.clamp_min(0)
    for name, param in new.items():
        optimizer = optimizers.get(name)
        if optimizer is None:
            continue
        state = optimizer.state.pop(old[name], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                moved = state[key][index]
                moved[~inherit] = 0.0
                state[key] = moved
        optimizer.param_groups[0]["params"] = [param]
        optimizer.state[param] = state


def rebind(optimizers: Dict[str, torch.optim.Optimizer], params: Dict[str, Parameter]) -> None:
    """Point each optimizer at the live parameter of its name, keeping its state when the shapes fit.

    nerfstudio's trainer builds the optimizers before it loads a checkpoint, and loading resizes
    (replaces) the parameters: on resume the optimizers would otherwise update stale copies.
    """
    for name, param in params.items():
        optimizer = optimizers.get(name)
        if optimizer is None or optimizer.param_groups[0]["params"][0] is param:
            continue
        state = optimizer.state.pop(optimizer.param_groups[0]["params"][0], {})
        fits = all(v.shape == param.shape for k, v in state.items() if k in ("exp_avg", "exp_avg_sq"))
        optimizer.param_groups[0]["params"] = [param]
        optimizer.state[param] = state if fits else {}


def _robust_sigma(values: np.ndarray) -> float:
    """The standard deviation of ``values``' noise, robust to the few strong values (missing atoms):
    1.4826 x their median absolute deviation from the median."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _follow(values: torch.Tensor, chosen: torch.Tensor, fill) -> torch.Tensor:
    """Compose a per-Gaussian map with an index map: ``values[chosen]``, and ``fill`` where
    ``chosen`` is -1 (a Gaussian that no single old one became)."""
    valid = chosen >= 0
    out = torch.full(chosen.shape, fill, dtype=values.dtype, device=values.device)
    out[valid] = values[chosen[valid]]
    return out
