"""The atomsplat model for nerfstudio: a thin adapter around three parts that know nothing of it.

- :class:`atomsplat.model.cloud.AtomCloud`: the Gaussians (Angstrom, sample frame) and their exact
  projection;
- :class:`atomsplat.model.corrections.ViewCorrections`: per-projection shifts and background;
- :class:`atomsplat.model.strategy.DensityStrategy`: merging, pruning, splitting, births.

This module turns nerfstudio cameras into :class:`atomsplat.model.cloud.Views` (the one place where
scene units are undone, with the dataparser's scale), renders every image through one path
(:meth:`AtomSplatModel.render`: training, births, the viewer, evaluation and export all use it),
wires the strategy into nerfstudio's training callbacks, and logs what the strategy reports.

The model subclasses :class:`SplatfactoModel` so that nerfstudio's viewer and tools treat it as a
Gaussian model, but it never runs splatfacto's ``populate_modules`` (which needs gsplat on CUDA
and downloads LPIPS weights), nor its rasterizer, which alpha-composites.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Literal, Optional, Type

import ase.io
import numpy as np
import torch
import tyro
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.models.splatfacto import SplatfactoModel
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from torch.nn import Parameter

from atomsplat.analysis.baselines import sirt
from atomsplat.analysis.image_metrics import projection_scores
from atomsplat.analysis.matching import evaluate
from atomsplat.analysis.species import label_by_weight
from atomsplat.data.dataset import display_image
from atomsplat.geometry import pixel_centers, resolution_stretch, view_rotations
from atomsplat.model import density
from atomsplat.model.camera_views import camera_views
from atomsplat.model.cloud import AtomCloud, AtomShape, Views, atoms_of, project, series_views
from atomsplat.model.corrections import ViewCorrections
from atomsplat.model.init import initial_positions, start_from_atoms
from atomsplat.model.losses import NoiseModel
from atomsplat.model.refinement import UNCERTAINTY_KINDS, position_uncertainties, refine, relabel_fall, removal_rise
from atomsplat.model.species_prior import SpeciesPrior
from atomsplat.model.strategy import (
    CROWDED_LIMIT,
    CROWDED_REACH,
    CROWDED_RISE,
    DEFAULT_MERGE_DISTANCE,
    FINAL_BIRTH_ROUNDS,
    FINAL_BIRTH_SEPARATION,
    FINAL_BIRTH_SIGNIFICANCE,
    DensityOptions,
    DensityStrategy,
    Evidence,
    RefineRecord,
    bond_halves,
    bonded,
    minimum_distance,
    rebind,
)
from atomsplat.render.footprints import covariance_gradients, removal_gains
from atomsplat.render.projector import DEFAULT_WINDOW
from atomsplat.viewer.display import species_colours
from atomsplat.viewer.monitor import TrainingMonitor
from atomsplat.viewer.spheres import gsplat_camera, render_spheres, sphere_style

FINAL_SHIFT_ITERATIONS = 3
"""Fisher scoring steps of the shifts before the final refinement, which holds them (in training
one follows each density pass)."""

RESIDUAL_SIRT_ITERATIONS = 5
"""Passes of the residual's SIRT in training's births under evidence selection
(:meth:`AtomSplatModel.residual_volume`). Fitted from the truth less 20 % (``benchmarks/birth_search.py``),
smoothed by the atoms' width, at 5 standard scores over the whole volume (before the search kept
to the Gaussians' box): 2 nm Si at 8e3 e/A^2, 39 maxima pass, 32 at missing atoms (20 passes: 51,
34); 9 nm Si, 1,868 pass, 1,509 at missing atoms (20 passes: 2,191, 1,768), in 11 s against 44 s.
Smoothed over one voxel instead of the atoms' width, 20 passes gave at 2 nm 31 and 6."""


@dataclass
class AtomSplatModelConfig(ModelConfig, DensityOptions):
    """Atoms as Gaussians. Lengths in Angstrom."""

    _target: Type = field(default_factory=lambda: AtomSplatModel)
    # nerfstudio's generic model options that mean nothing here: fixed, and hidden from the CLI
    enable_collider: tyro.conf.Suppress[bool] = False
    collider_params: tyro.conf.Suppress[Optional[Dict[str, float]]] = None
    loss_coefficients: tyro.conf.Suppress[Dict[str, float]] = field(default_factory=dict)
    eval_num_rays_per_chunk: tyro.conf.Suppress[int] = 1 << 15
    prompt: tyro.conf.Suppress[Optional[str]] = None
    sh_degree: tyro.conf.Suppress[int] = 0
    """No view dependence (read by ``ns-export gaussian-splat``)."""
    merge_distance: Optional[float] = None
    """Minimum distance between atoms, A; None: 1.6, for counts 0.55 x the elements' shortest bond."""
    # how many neighbours merging searches in large clouds: fixed here
    merge_neighbours: tyro.conf.Suppress[int] = 20
    merge_neighbours_above: tyro.conf.Suppress[int] = 10000
    # an experiment's choice, not a user's (docs/lowdose.md, "Not yet at scale"): set in a benchmark preset's
    # options or through atomsplat.training.train, hidden from the CLI
    birth_search: tyro.conf.Suppress[Literal["score", "reconstruction"]] = "score"

    isotropic: bool = True
    """One width per atom (the paper's isotropy prior); False: full covariance (ablation)."""
    init_count: Optional[int] = None
    """Initial number of Gaussians; None: ``init_density`` x the volume of the support."""
    init_density: float = 0.08
    """Initial Gaussians per A^3 of the support (FCC gold has 0.059 atoms per A^3)."""
    init_support: Literal["peaks", "reconstruction", "hull", "sphere", "atoms"] = "peaks"
    """Initial positions (:mod:`atomsplat.model.init`): the maxima of a quick SIRT reconstruction, drawn
    by its density, in the visual hull, in the sphere every view sees, or at ``init_atoms``."""
    init_atoms: Optional[Path] = None
    """"atoms": extended XYZ file (A, sample frame) of the atoms to start from (warm start)."""
    init_voxel: float = 0.4
    """Voxel size of the initial reconstruction, A (the projections are binned to about it)."""
    init_smoothing: float = 1.0
    """Width of the Gaussian that smooths the initial reconstruction for its support, A."""
    init_peak_smoothing: float = 0.5
    """"peaks": width of the Gaussian smoothing the reconstruction before its maxima are taken, A."""
    support_threshold: float = 0.1
    """The support is where the smoothed reconstruction exceeds this fraction of its peak."""
    hull_threshold: tyro.conf.Suppress[float] = 0.05
    """"hull": a point is in the hull when its pixel exceeds this fraction of the series maximum in
    nearly every view."""
    init_sigma: float = 0.6
    """Initial width, A."""
    min_sigma: float = 0.05
    """Widths are kept in [min_sigma, max_sigma] A after every step."""
    max_sigma: float = 2.0
    window: float = DEFAULT_WINDOW
    """Footprint half-width in widths; at 4 the truncated mass is below 1.3e-4 of an atom."""
    atom_shape: Literal["auto", "gaussian", "core+halo"] = "auto"
    """One Gaussian per atom, or a core and a halo at one centre (:class:`AtomShape`); "auto": core+halo
    for counts, whose likelihood sees the atoms' long tails."""
    loss: Literal["auto", "l1", "l2", "poisson", "mixed"] = "auto"
    """Data term (:mod:`atomsplat.model.losses`); "auto": "poisson" for counts (integers, or declared in
    metadata.json), else "l1" (the paper's); "mixed": shot and read noise (``read_noise``)."""
    gain: Optional[float] = None
    """Counts per data unit (None: the series' ``gain``, 1 for data recorded in counts)."""
    read_noise: float = 0.0
    """Read-noise standard deviation in data units, for the "mixed" loss."""
    refine_shifts: Optional[bool] = None
    """Solve a detector shift per projection (alignment), shrunk by the spread the shifts show (an
    aligned series stays put); None: for counts."""
    shifts_after: float = 0.05
    """Fraction of the training steps before the shifts are first solved (the atoms take shape first)."""
    refine_gains: Optional[bool] = None
    """Solve a dose factor per projection (a drifting beam current or exposure) once training's
    passes are done, before the final refinement, shrunk by the spread the factors show (a series
    of one dose keeps every factor at 1); None: for counts."""
    background_degree: Optional[int] = None
    """Fit a polynomial background of this degree per projection (0: constant pedestal, 1: plane,
    2: quadratic); -1: none, the projections are of the atoms alone. None: a plane (1) for
    counts, none for other data."""
    tie_species: Literal["auto", "final", "on", "off"] = "auto"
    """Tie each atom's weight and width to its species': "final": in the final refinement and
    uncertainties; "on": in training too; "auto": "final" for counts (no elements: widths alone)."""
    # "auto" is "final": on the low-dose preset it lowered the position error at every dose; tied in
    # training as well, it made doublets at 1.6e4 e/A^2 (docs/lowdose.md, "The species tie")
    species_spread: float = 0.1
    """Spread of log-weight within a species (the log-width's is half of it)."""
    final_refinement: bool = True
    """After the last density pass, fit the atoms to every training projection at once to
    convergence (L-BFGS on the smooth likelihood, :mod:`atomsplat.model.refinement`)."""
    full_uncertainty_limit: int = 1000
    """Up to this many atoms the positional uncertainties include all atoms' correlations (the whole
    Fisher matrix); above it, each atom's own block scaled by a band's (README, export)."""
    seed: int = 0
    """Seed of the initial positions and of duplication (for counts, copies go along the gradient)."""


class AtomSplatModel(SplatfactoModel):
    """Isotropic (or anisotropic) Gaussians, additive exact projector, density control."""

    config: AtomSplatModelConfig

    # ----------------------------------------------------------------------------- set-up
    def populate_modules(self):
        metadata = self.kwargs["metadata"]
        self.series = metadata["tilt_series"]
        """The :class:`atomsplat.data.series.TiltSeries` trained on."""
        self.scale = float(metadata["scale"])
        """nerfstudio scene units per A (the dataparser's scale)."""
        self.level = float(self.series.projections.max())
        """The series maximum, data units: white in the viewer, and the scale of the loss floor."""
        config = self.config
        self.generator = torch.Generator().manual_seed(config.seed)
        stack = torch.from_numpy(np.ascontiguousarray(self.series.projections, dtype=np.float32))
        self.register_buffer("measured", stack, persistent=False)
        train = torch.as_tensor(np.asarray(metadata["indices"]), dtype=torch.long)
        self.register_buffer("train_indices", train, persistent=False)
        self.noise, degree = noise_model(self.series, config)
        distance = minimum_distance(self.series, config)
        self.bonded = bonded(self.series, config)
        """Whether the minimum distance follows the elements' bonds (then by each pair's species
        in the test of crowded Gaussians: :meth:`_refit_crowded`)."""
        if config.merge_distance is None and distance != DEFAULT_MERGE_DISTANCE:
            CONSOLE.print(f"minimum distance between atoms {distance:.2f} A (0.55 x the shortest bond of the elements)")
        # the model's own copy holds the distance used; the caller's config (and config.yml) keep None,
        # so a config shared by several runs resolves it again for each dataset
        self.config = config = replace(config, merge_distance=distance)
        rotations = torch.from_numpy(view_rotations(self.series.tilt_angles, self.series.tilt_axis_angle)).float()
        shifts = config.refine_shifts if config.refine_shifts is not None else bool(self.series.counts)
        if shifts and config.refine_shifts is None:
            CONSOLE.print("counts: a shift solved per view (--pipeline.model.refine-shifts False holds the views)")
        gains = config.refine_gains if config.refine_gains is not None else bool(self.series.counts)
        if gains and config.refine_gains is None:
            CONSOLE.print("counts: a dose factor solved per view (--pipeline.model.refine-gains False holds them at 1)")
        self.corrections = ViewCorrections(rotations, train, stack, shifts, degree, self.noise, gains=gains)
        signal = stack
        if self.corrections.has_background:
            signal = stack - self.corrections.background_of(torch.arange(len(stack)))
        positions = initial_positions(self.series, signal, config, self.generator)
        mass = float(signal.sum(dim=(1, 2)).mean()) * self.series.pixel_size**2
        halo = config.atom_shape == "core+halo" or (config.atom_shape == "auto" and bool(self.series.counts))
        self.cloud = AtomCloud(
            positions,
            config.init_sigma,
            max(mass, 1e-12) / len(positions),
            config.isotropic,
            config.min_sigma,
            config.max_sigma,
            config.window,
            self.generator,
            AtomShape() if halo and config.isotropic else None,
        )
        if config.init_support == "atoms":
            start_from_atoms(self.cloud, config.init_atoms)
        if config.selection == "evidence" and not (self.noise.is_likelihood and config.isotropic):
            raise ValueError(
                "selection 'evidence' needs a likelihood (counts: loss poisson or mixed) and isotropic Gaussians"
            )
        evidence = None
        if self.noise.is_likelihood and config.isotropic:
            evidence = Evidence(self.removal_evidence, self.covariance_evidence)
        self.strategy = DensityStrategy(
            config, generator=self.generator, evidence=evidence, reconstruct=self.residual_volume
        )
        self.prior = species_prior(self.series, config, self.noise)
        """The :class:`SpeciesPrior` of the atoms, or None."""
        self.register_buffer("finished", torch.zeros((), dtype=torch.bool))
        """True once training ran its final pass (:meth:`finish`): the atoms are final."""
        self.register_buffer("uncertainty", torch.zeros(0, 3))
        """(K, 3) Cramer-Rao standard deviations of the final atoms' x, y, z, A (empty before)."""
        self.register_buffer("uncertainty_kind", torch.zeros((), dtype=torch.int8))
        """How ``uncertainty`` was computed: its index in :data:`UNCERTAINTY_KINDS`."""
        self.step = 0
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        truth = metadata.get("ground_truth")
        self.truth = None if truth is None else ase.io.read(truth).get_positions()
        """(M, 3) true atoms, A, when the dataset has them (the log then shows TPR / FPR)."""
        self.background_color = torch.zeros(3)
        self.crop_box = None
        self.monitor = TrainingMonitor(self)  # the web viewer's panel and atoms; idle without a viewer

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]
        self.cloud.resize(state_dict["cloud.params.positions"].shape[0])
        self.uncertainty = self.uncertainty.new_zeros(state_dict["uncertainty"].shape)
        if "uncertainty_kind" not in state_dict:  # saved before the kind was kept
            state_dict = {**state_dict, "uncertainty_kind": torch.zeros((), dtype=torch.int8)}
        if self.corrections.solves_gains and "corrections.gains" not in state_dict:  # saved before gains were solved
            state_dict = {**state_dict, "corrections.gains": torch.ones_like(self.corrections.gains)}
        return torch.nn.Module.load_state_dict(self, state_dict, **kwargs)

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        return {name: [param] for name, param in self.cloud.params.items()}

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        shape = {} if self.cloud.shape is None else {"atom_shape": list(self.cloud.shape.parameters())}
        return {
            **self.get_gaussian_param_groups(),
            **shape,
        }

    # ----------------------------------------------------------------------------- what nerfstudio reads
    # splatfacto's attributes, read by `ns-export gaussian-splat` (and, for ``means``, by
    # nerfstudio's viewer once, for a hidden "initial points" layer). In A at this public boundary:
    # the exported PLY holds x, y, z and log widths (scale_*) in A, and the log of each Gaussian's
    # integrated weight (data units x A^2) as its opacity; colour by species where the dataset
    # names its elements (Jmol colours), else grey by weight.
    @property
    def num_points(self) -> int:
        return self.cloud.count

    @property
    def means(self) -> torch.Tensor:
        """(K, 3) centres, A, sample frame."""
        return self.cloud.positions.detach()

    @property
    def scales(self) -> torch.Tensor:
        """(K, 3) log of the widths, log A."""
        if self.config.isotropic:
            return self.cloud.params["log_sigmas"].detach()[:, None].expand(-1, 3)
        return self.cloud.params["log_scales"].detach()

    @property
    def quats(self) -> torch.Tensor:
        """(K, 4) orientations (w, x, y, z); the identity for isotropic Gaussians."""
        if self.config.isotropic:
            return self.cloud.positions.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(self.num_points, 4)
        return self.cloud.params["quats"].detach()

    @property
    def opacities(self) -> torch.Tensor:
        """(K, 1) log of the integrated weights, log(data units x A^2) (a PLY's opacity field is a logit:
        viewers show sigmoid(log w) = w / (1 + w))."""
        return self.cloud.params["log_weights"].detach()[:, None]

    @property
    def features_dc(self) -> torch.Tensor:
        """(K, 3) logit of the display colour in [0, 1] (sh_degree 0): Jmol colours by species from
        the weights when the dataset names its elements, else the grey level weight / largest weight."""
        weights = self.cloud.weights.detach()
        symbols = self.species_labels()
        if symbols is not None:
            colour = torch.from_numpy(species_colours(symbols) / 255.0).to(weights)
        else:
            colour = (weights / weights.max().clamp_min(1e-30) if self.num_points else weights)[:, None].expand(-1, 3)
        return torch.logit(colour.clamp(1e-4, 1.0 - 1e-4))

    @property
    def features_rest(self) -> torch.Tensor:
        """(K, 0, 3): no view dependence."""
        return self.cloud.positions.new_zeros(self.num_points, 0, 3)

    def species_labels(self) -> Optional[np.ndarray]:
        """(K,) the Gaussians' species from their weights (:func:`label_by_weight`) when the dataset
        names its elements and the weights take at least as many values, else None (nerfstudio's
        viewer reads every property of the model when it starts, at equal initial weights too)."""
        elements = self.series.elements
        weights = self.cloud.weights.detach().cpu().double().numpy()
        if not elements or len(np.unique(weights)) < len(elements):
            return None
        return label_by_weight(weights, elements)

    # ----------------------------------------------------------------------------- rendering
    def views(self, cameras: Cameras) -> Views:
        """The :class:`Views` of nerfstudio cameras (scene units undone: A;
        :func:`atomsplat.model.camera_views.camera_views`). Cameras of the dataset, of every split,
        know their projections and get their solved shifts and background (a held-out projection:
        its known shift and the border fit of its background; its shift is not learned)."""
        return camera_views(cameras, self.scale)

    def render(self, views: Views, fit: bool = False) -> Dict[str, torch.Tensor]:
        """The model of ``views``: the one path by which every image of the model is made.

        Views of measured projections get their solved shifts, gains and background; with ``fit``
        the background is first solved for the atoms as they are (training). Returns
        "projection" (V, H, W) data units, "atoms" (V, H, W) the atoms' part of it, and "offsets"
        (V, 2) A, the detector offsets the atoms were projected with.
        """
        views = self.corrections.applied(views)
        atoms = self.cloud.project(views)
        outputs = {"projection": atoms, "atoms": atoms, "offsets": views.offsets}
        if views.indices is not None and self.corrections.has_background:
            if fit:
                self.corrections.fit(atoms.detach(), self.measured[views.indices], views.indices)
            outputs["projection"] = atoms + self.corrections.background_of(views.indices)
        return outputs

    def series_views(self, indices) -> Views:
        """The views of projections ``indices`` (V,) of the series, on the model's device."""
        return series_views(self.series, indices).to(self.device)

    @torch.no_grad()
    def render_projections(self, indices) -> torch.Tensor:
        """(V, H, W) the model of measured projections ``indices`` (V,) of the whole series."""
        views = self.series_views(indices)
        return torch.cat([self.render(chunk)["projection"] for chunk in views.split(8)])

    def get_outputs(self, camera: Cameras) -> Dict[str, torch.Tensor]:
        """Model of a batch of same-sized training cameras: "projection" (V, H, W) in data units."""
        return self.render(self.views(camera), fit=self.training)

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, torch.Tensor]:
        """One camera for the viewer, evaluation and ``ns-render``; every output is (H, W, C):

        - "rgb" (C = 3): the projection as a grey image in [0, 1], the series maximum white;
        - "normalized_projection" (C = 1): the projection over the series maximum :attr:`level`,
          exact (not clipped; times :attr:`level` gives data units);
        - "accumulation" (C = 1): the same clipped to [0, 1], the nearest thing a projection has to
          nerfstudio's opacity (``ns-render`` masks the depth picture with it);
        - "depth" (C = 1): the weight-averaged distance of the Gaussians along each ray, in scene
          units (far where a ray meets no weight);
        - on CUDA, for the viewer's free camera: "spheres" (C = 3), :meth:`sphere_picture`.
        """
        camera = camera.to(self.device)
        views = self.views(camera[0:1] if camera.shape else camera)
        projection = self.render(views)["projection"][0]
        origin = camera.camera_to_worlds.reshape(-1, 3, 4)[0, :, 3] / self.scale
        depth_a = (self.cloud.positions - origin) @ views.rotations[0, 2].to(self.cloud.positions)
        moment = self.cloud.project(views, weights=self.cloud.weights * depth_a)[0]
        seen = projection > 1e-3 * self.level
        depth = torch.where(seen, moment / projection.clamp_min(1e-12), torch.full_like(projection, 1e3)) * self.scale
        normalized = projection[..., None] / max(self.level, 1e-30)
        outputs = {
            "rgb": display_image(projection, self.level),  # first: what the viewer shows by default
            "normalized_projection": normalized,
            "accumulation": normalized.clamp(0.0, 1.0),
            "depth": depth[..., None],
        }
        if views.indices is None and projection.is_cuda:  # the viewer's free camera, on a GPU
            outputs["spheres"] = self.sphere_picture(camera[0:1] if camera.shape else camera)
        return outputs

    @torch.no_grad()
    def sphere_picture(self, camera: Cameras) -> torch.Tensor:
        """(H, W, 3) the atoms as coloured balls, depth-composited by gsplat's rasterizer (CUDA only;
        :mod:`atomsplat.viewer.spheres`): a picture for the eye, species by colour."""
        colours, widths = sphere_style(self.cloud.weights.detach().cpu().numpy(), self.species_labels())
        return render_spheres(self.cloud.positions.detach(), colours, widths, gsplat_camera(camera, self.scale))

    def get_rgba_image(self, outputs: Dict[str, torch.Tensor], output_name: str = "rgb") -> torch.Tensor:
        """(H, W, 4): the grey image with the accumulation as alpha (``ns-render --rendered-output-names rgba``)."""
        return torch.cat([outputs[output_name], outputs["accumulation"]], dim=-1)

    # ----------------------------------------------------------------------------- losses
    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        target = batch["image"].reshape(outputs["projection"].shape).to(outputs["projection"])
        losses = {self.noise.kind: self.noise.loss(outputs["projection"], target)}
        if self.prior is not None and self.config.tie_species == "on" and self.prior.ready(self.num_points):
            # the prior in the data term's units: nats over (nats per unit x all training pixels)
            pixels = len(self.train_indices) * self.measured.shape[1] * self.measured.shape[2]
            params = self.cloud.params
            nats = self.prior.negative_log_prior(params["log_weights"], params["log_sigmas"])
            losses["species"] = nats / (self.noise.nats * pixels)
        return losses

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        target = batch["image"].reshape(outputs["projection"].shape).to(outputs["projection"])
        residual = (outputs["projection"] - target).detach()
        return {
            "l1": residual.abs().mean(),
            "relative_l2": residual.norm() / target.norm().clamp_min(1e-12),
            "gaussians": torch.tensor(float(self.num_points)),
        }

    def get_image_metrics_and_images(self, outputs, batch):
        """Scores of one evaluation camera (``ns-eval`` averages them over the held-out projections):
        PSNR, SSIM, L1 and relative L2 of the projection on the data's own scale
        (:func:`atomsplat.analysis.image_metrics.projection_scores`, data range: the whole measured
        series' maximum minus minimum), the number of Gaussians, and when the dataset has its true
        atoms, the atoms' TPR, FPR and RMS error (A) against them (:meth:`atom_scores`). All floats."""
        model = outputs["normalized_projection"][..., 0] * self.level
        target = batch["image"].reshape(model.shape).to(model)
        metrics = projection_scores(model, target, self.data_range)
        metrics["gaussians"] = float(self.num_points)
        metrics.update(self.atom_scores())
        shown = torch.cat([display_image(target, self.level), outputs["rgb"]], dim=1)
        return metrics, {"measured_vs_model": shown}

    @property
    def data_range(self) -> float:
        """The measured series' maximum minus its minimum, data units: the range of PSNR and SSIM."""
        return float(self.measured.max() - self.measured.min())

    @torch.no_grad()
    def atom_scores(self) -> Dict[str, float]:
        """The atoms of :meth:`atoms` against the dataset's true atoms: "atoms", "tpr", "fpr" and,
        when any matched, "rmse" (A), as :func:`atomsplat.analysis.matching.evaluate` (0.75 A); empty
        without a ground truth. Kept for the model as it is (one evaluation scores it once)."""
        if self.truth is None:
            return {}
        key = (self.step, self.num_points, bool(self.finished))
        if getattr(self, "_atom_scores", (None, None))[0] != key:
            scores = evaluate(self.atoms()["positions"], self.truth)
            values = {"atoms": float(scores.n_pred), "tpr": float(scores.tpr), "fpr": float(scores.fpr)}
            if scores.rmse is not None:
                values["rmse"] = float(scores.rmse)
            self._atom_scores = (key, values)
        return dict(self._atom_scores[1])

    # ----------------------------------------------------------------------------- training
    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        trainer = attributes.trainer
        if trainer is not None:  # on resume the schedule runs over the steps of all runs together
            self.set_total_steps(trainer._start_step + trainer.config.max_num_iterations)
        return [
            TrainingCallback(
                [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._before_step, args=[attributes.optimizers]
            ),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after_step),
            *self.monitor.training_callbacks(attributes),
        ]

    def set_total_steps(self, total: int) -> None:
        """Training steps in all: the density schedule and the start of the shifts follow it."""
        self.strategy.total_steps = total
        self.corrections.shifts_from = int(self.config.shifts_after * total)

    def _before_step(self, optimizers: Optimizers, step: int):
        self.step = step
        self.optimizers = optimizers.optimizers
        rebind(self.optimizers, dict(self.cloud.params.items()))

    @torch.no_grad()
    def _after_step(self, step: int):
        record = self.strategy.step_post_backward(self.cloud, self.optimizers, step, self.residuals)
        self.cloud.clamp_widths()
        if record is not None:
            self.finished.fill_(False)
            if self.corrections.solves_shifts and step >= self.corrections.shifts_from:
                self._solve_shifts()
            if self.config.tie_species == "on":
                self._update_prior()
            self.report(record)

    def _update_prior(self, newborn: int = 0) -> None:
        """Species, and their mean weight and width, for the Gaussians as they are (not diffuse ones,
        nor the last ``newborn``, births no pass has yet tested)."""
        if self.prior is not None and self.config.isotropic:
            params = self.cloud.detached()
            atoms = ~density.diffuse(params, self.config.diffuse_width)
            atoms[len(atoms) - newborn :] = False
            self.prior.update(params["log_weights"], params["log_sigmas"], atoms)

    def fitted_prior(self, newborn: int = 0) -> Optional[SpeciesPrior]:
        """The species prior fitted to the Gaussians as they are (species, mean weight and width), or
        None where species are not tied (or there are no atoms to tie yet). The last ``newborn``
        Gaussians (births after the final refinement, appended last) are left out of it: an untested
        newborn at a noise maximum, pulled to its species' weight, would misfit the data around it
        (:meth:`_final_births`)."""
        self._update_prior(newborn)
        return self.prior if self.prior is not None and self.prior.ready(self.num_points) else None

    @torch.no_grad()
    def finish(self) -> RefineRecord:
        """The end of a training run: the last density pass (merge and prune), the final refinement
        to convergence (under weight selection with merging, the Gaussians still diffuse then
        removed and the rest refined again, the background held: :meth:`_take_back_diffuse`), atoms
        born where the converged residual shows them missing and refined again (:meth:`_final_births`;
        under evidence selection at :data:`FINAL_BIRTH_SIGNIFICANCE`), the shifts and gains of the
        projections held out of training solved for the final atoms
        (:meth:`ViewCorrections.solve_held_out`, :meth:`ViewCorrections.solve_held_out_gains`), and
        the atoms' positional uncertainties. The training views' gains are solved before the final
        refinement (:meth:`_solve_gains`), which holds them. The atoms are then final."""
        record = self.strategy.refine(self.cloud, self.optimizers, self.step, final=True)
        self.report(record)
        prior = self.fitted_prior()
        args = self.refinement_args()
        if self.corrections.solves_shifts and self.cloud.count > 0:
            spread = ", ".join(f"{100 * float(t):.1f}" for t in self._solve_shifts(FINAL_SHIFT_ITERATIONS))
            CONSOLE.print(f"shifts solved: spread {spread} pm (x, y), the final refinement holds them")
        if self.corrections.solves_gains and self.cloud.count > 0:
            self._solve_gains()
            gains = self.corrections.gains[self.train_indices]
            CONSOLE.print(
                f"dose factors solved: {float(gains.min()):.3f} to {float(gains.max()):.3f} "
                f"(spread {100 * float(self.corrections._gain_spread):.1f} %), the final refinement holds them"
            )
        if self.config.final_refinement and self.cloud.count > 0:
            done = refine(*args, prior=prior)
            _print_refinement(f"final refinement on all {len(args[3])} training projections", done)
            prior = self._take_back_diffuse(args, prior)
            if self.strategy.evidence is not None and self.cloud.count > 0:
                prior = self._final_births(args, prior, FINAL_BIRTH_SIGNIFICANCE)
                prior = self._refit_crowded(args, prior)
                prior = self._relabel_crowded(args, prior)
        held_out = torch.from_numpy(np.setdiff1d(np.arange(len(self.measured)), self.train_indices.cpu().numpy()))
        if len(held_out) and self.cloud.count > 0:
            views = self.series_views(held_out)
            if self.corrections.solves_shifts:
                self.corrections.solve_held_out(self.cloud.project, views, self.measured)
            if self.corrections.solves_gains:
                self.corrections.solve_held_out_gains(self.cloud.project, views, self.measured)
        if self.config.isotropic and self.cloud.count > 0:
            start = time.perf_counter()
            self.uncertainty, how = position_uncertainties(
                *args, full_limit=self.config.full_uncertainty_limit, prior=prior
            )
            self.uncertainty_kind.fill_(UNCERTAINTY_KINDS.index(how))
            median = float(self.uncertainty.median()) * 100.0
            CONSOLE.print(
                f"positional uncertainty (Cramer-Rao, {how}): median {median:.2f} pm per axis "
                f"({time.perf_counter() - start:.0f} s)"
            )
            if how != "marginal":
                CONSOLE.print(
                    f"  more than full_uncertainty_limit = {self.config.full_uncertainty_limit} atoms: each atom's "
                    "own Fisher block, its neighbours held known"
                    + (
                        ", scaled by what the neighbours add in a band across the tilt axis (an estimate)"
                        if how == "scaled own block"
                        else ": a lower bound, by about a third in a thick particle"
                    )
                    + ' (docs/lowdose.md, "Not yet at scale")'
                )
        self.finished.fill_(True)
        return record

    def refinement_args(self) -> tuple:
        """The first five arguments of :func:`atomsplat.model.refinement.refine` (and of the
        uncertainties): the cloud, corrections, measured projections, training views, noise."""
        views = self.series_views(self.train_indices)
        return self.cloud, self.corrections, self.measured, views, self.noise

    def _solve_shifts(self, iterations: int = 1) -> torch.Tensor:
        """Solve the training views' shifts for the atoms as they are ``iterations`` times
        (:meth:`atomsplat.model.corrections.ViewCorrections.solve_shifts`); returns their spread (2,) A."""
        views = self.series_views(self.train_indices)
        for _ in range(iterations):
            spread = self.corrections.solve_shifts(self.cloud.project, views, self.measured)
        return spread

    def _solve_gains(self) -> None:
        """Solve the training views' gains for the atoms as they are
        (:meth:`atomsplat.model.corrections.ViewCorrections.solve_gains`); the atoms' weights take the
        level (the model of the mean dose does not change)."""
        level = self.corrections.solve_gains(self.cloud.project, self.series_views(self.train_indices), self.measured)
        if level != 1.0:
            self.cloud.params["log_weights"].data += math.log(level)

    def _take_back_diffuse(self, args, prior):
        """After the final refinement: under weight selection with merging, remove the Gaussians still
        diffuse and refine the rest, the background held (the atoms, not the background, take back
        the diffuse signal); then :meth:`_final_births`, the background still held (atoms missing
        that only a diffuse Gaussian stood for, or that turned diffuse taking its signal).
        ``args``: :meth:`refinement_args`; returns the species prior as it is at the end."""
        removed = self.strategy.remove_diffuse(self.cloud, self.optimizers)
        if not removed or self.cloud.count == 0:
            return prior
        prior = self.fitted_prior()
        _print_refinement(
            f"{removed} diffuse Gaussians removed, refined again", refine(*args, prior=prior, solve_background=False)
        )
        return self._final_births(args, prior, solve_background=False)

    def _final_births(self, args, prior, significance=None, solve_background=True):
        """After the final refinement: while the residual shows atoms missing, give them birth (under
        evidence selection at ``significance`` standard deviations) and refine all, at most
        :data:`FINAL_BIRTH_ROUNDS` times, and no more once the next pass has removed all of a round's
        newborns; a last pass merges and prunes what the births left (under evidence selection: each
        newborn that does not pay its price). A round's newborns stay out of the species prior until
        that pass has tested them (:meth:`fitted_prior`). ``args``: :meth:`refinement_args`; returns
        the species prior as it is at the end."""
        search = self.residuals if self.strategy.options.birth_every > 0 else None
        newborn = 0  # the last round's births still in the cloud (appended last)
        for k in range(FINAL_BIRTH_ROUNDS + 1):
            record = self.strategy.refine(
                self.cloud, self.optimizers, self.step, residuals=search if k < FINAL_BIRTH_ROUNDS else None,
                final=True, significance=significance, newborn=newborn,
            )  # fmt: skip
            self.report(record)
            if record.newborn_kept == 0 and k < FINAL_BIRTH_ROUNDS:  # this pass gave none birth, nor will the next
                CONSOLE.print(f"births end: none of the {newborn} born in the last round paid its price")
                search = None
            if not (record.born or record.merged or record.pruned) or self.cloud.count == 0:
                break
            newborn = record.born
            prior = self.fitted_prior(newborn)
            what = f"refined with {record.born} born, {record.merged + record.pruned} merged or pruned"
            _print_refinement(what, refine(*args, prior=prior, solve_background=solve_background))
            if self.strategy.evidence is not None and record.born:  # a newborn beside an atom is its second Gaussian
                distance = FINAL_BIRTH_SEPARATION * self.strategy.options.merge_distance
                crowded = self.strategy.remove_crowded(self.cloud, self.optimizers, record.born, distance)
                newborn -= crowded
                if crowded:
                    prior = self.fitted_prior(newborn)
                    what = f"{crowded} newborns within {distance:.2f} A of another Gaussian removed, refined"
                    _print_refinement(what, refine(*args, prior=prior, solve_background=solve_background))
        return self.fitted_prior() if newborn else prior  # the last newborns passed their test

    def _refit_crowded(self, args, prior):
        """Under evidence selection, at the end: each Gaussian that :meth:`DensityStrategy.crowded`
        picks (of two closer than the pair separation, the one whose removal costs less with the
        others held, if that is little enough) is removed where its neighbours within
        :data:`CROWDED_REACH` x the merge distance, refitted without it, lose less than
        :data:`CROWDED_RISE` nats (:func:`removal_rise`; they keep their refitted parameters); then,
        if any went, all are refined. The held test cannot take a Gaussian that holds counts its
        neighbours would take up if they moved. Only up to :data:`CROWDED_LIMIT` Gaussians.
        ``args``: :meth:`refinement_args`; returns the species prior."""
        if self.cloud.count > CROWDED_LIMIT:
            return prior
        params = self.cloud.detached()
        views, stretch, halves = self._pair_setting()
        chosen = self.strategy.crowded(params, self.removal_evidence(params)[0], stretch, halves).tolist()
        if not chosen:
            return prior
        start = time.perf_counter()
        with torch.no_grad():
            model = torch.cat([part for _, part, _ in self._models(params)])
        measured, reach = self.measured[views.indices], CROWDED_REACH * self.strategy.options.merge_distance
        alive = torch.ones(self.cloud.count, dtype=torch.bool)
        for old in chosen:
            params, index = self.cloud.detached(), int(alive[:old].sum())
            near = torch.nonzero((params["positions"] - params["positions"][index]).norm(dim=1) < reach).squeeze(1)
            near = near[near != index]
            rise, fitted = removal_rise(self.cloud, index, near, views, model, measured, self.noise, reach, prior)
            if rise >= CROWDED_RISE:
                continue
            group = torch.cat([near.new_tensor([index]), near])
            params = self._replace_locally(params, group, near, fitted, views, model)
            kept = torch.nonzero(torch.arange(self.cloud.count, device=near.device) != index).squeeze(1)
            self.strategy.install(self.cloud, self.optimizers, {n: v[kept] for n, v in params.items()}, kept)
            alive[old], prior = False, self.fitted_prior()
        removed = len(chosen) - int(alive[chosen].sum())
        CONSOLE.print(
            f"crowded Gaussians: {removed} of {len(chosen)} tested removed, their neighbours refitted without each "
            f"({time.perf_counter() - start:.0f} s)"
        )
        if removed:
            _print_refinement(f"{removed} crowded Gaussians removed, refined", refine(*args, prior=prior))
        return prior

    def _relabel_crowded(self, args, prior):
        """Under evidence selection with two species tied or more, at the end: each two Gaussians of
        :meth:`DensityStrategy.close_pairs`, the closest first, take the other species (weights and
        widths started at their means) that their neighbours within :data:`CROWDED_REACH` x the merge
        distance, refitted with them, fit with a higher posterior, if any does (:func:`relabel_fall`:
        a Si and an O atom fitted each with the other's weight); then, if any changed, all are
        refined. Only up to :data:`CROWDED_LIMIT` Gaussians. ``args``: :meth:`refinement_args`;
        returns the species prior."""
        if prior is None or len(prior.means) < 2 or self.cloud.count > CROWDED_LIMIT:
            return prior
        views, stretch, halves = self._pair_setting()
        pairs = self.strategy.close_pairs(self.cloud.detached(), stretch, halves)
        if len(pairs) == 0:
            return prior
        start = time.perf_counter()
        with torch.no_grad():
            model = torch.cat([part for _, part, _ in self._models(self.cloud.detached())])
        measured, reach = self.measured[views.indices], CROWDED_REACH * self.strategy.options.merge_distance
        changed = 0
        for pair in torch.as_tensor(pairs, device=self.cloud.positions.device):
            params = self.cloud.detached()
            apart = torch.cdist(params["positions"], params["positions"][pair]).min(dim=1).values
            near = torch.nonzero(apart < reach).squeeze(1)
            near = near[(near != pair[0]) & (near != pair[1])]
            fall, fitted = relabel_fall(self.cloud, pair, near, views, model, measured, self.noise, reach, prior)
            if fall <= 0.0:
                continue
            group = torch.cat([pair, near])
            params = self._replace_locally(params, group, group, fitted, views, model)
            self.strategy.install(
                self.cloud, self.optimizers, params, torch.arange(self.cloud.count, device=near.device)
            )
            changed, prior = changed + 1, self.fitted_prior()
        CONSOLE.print(
            f"close pairs: {changed} of {len(pairs)} took other species, their neighbours refitted with them "
            f"({time.perf_counter() - start:.0f} s)"
        )
        if changed:
            _print_refinement(f"{changed} close pairs relabelled, refined", refine(*args, prior=prior))
        return prior

    def _pair_setting(self):
        """What the tests of close pairs measure by: the training views with their solved shifts and
        gains, their resolution stretch (3, 3) (:func:`resolution_stretch`) and each Gaussian's bond
        half (K,) A (:func:`bond_halves` of its species; None where the minimum distance is one)."""
        views = self._shifted_training_views()
        stretch = resolution_stretch(views.rotations.detach().cpu().double().numpy())
        symbols = self.species_labels() if self.bonded else None
        return views, stretch, None if symbols is None else bond_halves(symbols)

    def _replace_locally(self, params, group, rows, fitted, views, model):
        """``params`` with the Gaussians ``rows`` (N,) long set to ``fitted`` ({name: (N, ...)}), and
        ``model`` (V, H, W) of ``views`` (changed in place) with the Gaussians ``group`` (M,) long as
        they are replaced by ``fitted`` (``group`` holds ``rows``; those of it not in ``rows`` leave)."""
        shape = self.cloud.shape_params
        with torch.no_grad():
            model += project(fitted, views, window=self.cloud.window, shape=shape)
            model -= project(
                {name: values[group] for name, values in params.items()}, views, window=self.cloud.window, shape=shape
            )
        return {name: values.index_copy(0, rows, fitted[name]) for name, values in params.items()}

    def residuals(self, count: int):
        """Measured minus modelled projections (V, H, W) of about ``count`` training projections
        spread evenly over the series, their views (with solved shifts and gains), and the variance
        of every pixel (V, H, W) where the data term is a likelihood, else None: for births. With
        gains both are divided by each view's gain and its square (the atoms' units, in which a
        born Gaussian's footprint is the same in every view: the matched filter's score and
        information are those of the data)."""
        train = self.train_indices
        picks = torch.linspace(0, len(train) - 1, min(count, len(train))).round().long().unique()
        views = self.series_views(train[picks.to(train.device)])
        model = torch.cat([self.render(chunk)["projection"] for chunk in views.split(8)])
        variance = self.noise.variance(model) if self.noise.is_likelihood else None
        views = self.corrections.applied(views)
        residuals = self.measured[views.indices] - model
        if views.gains is None:
            return residuals, views, variance
        gains = views.gains[:, None, None]  # in the atoms' units: an atom's image is the same in every view
        return residuals / gains, views, None if variance is None else variance / gains.square()

    def residual_volume(self, images: torch.Tensor, views: Views):
        """:data:`atomsplat.model.strategy.Reconstruct` for births: a signed SIRT of residual images
        (V, H, W) of training ``views`` (:func:`atomsplat.analysis.baselines.sirt`,
        :data:`RESIDUAL_SIRT_ITERATIONS` passes in up to six ordered subsets, the views' shifts
        undone). Few passes keep the noise down and still resolve a missing atom that a plain
        back-projection smears over its neighbours. Returns the (W, H, H) volume indexed [ix, iy,
        iz], data units per A, the position of voxel (0, 0, 0), A, and the voxel size (the pixel
        size), A."""
        series, picks = self.series, views.indices.cpu().numpy()
        volume = sirt(
            images.detach().cpu().numpy(), series.tilt_angles[picks], series.pixel_size,
            iterations=RESIDUAL_SIRT_ITERATIONS, subsets=min(6, len(picks)), nonnegative=False,
            tilt_axis_angle=series.tilt_axis_angle, shifts=views.offsets.detach().cpu().numpy(),
        )  # fmt: skip
        origin = np.array([pixel_centers(n, series.pixel_size)[0] for n in volume.shape])
        return volume, origin, float(series.pixel_size)

    def _shifted_training_views(self) -> Views:
        """The training views with their solved shifts and gains as they are (no gradient)."""
        return self.corrections.applied(self.series_views(self.train_indices))

    def _models(self, params):
        """Yields (views, model (V, H, W), measured (V, H, W)) of the training projections in chunks,
        for Gaussians ``params``: the shifts and background as they are."""
        for views in self._shifted_training_views().split(8):
            model = project(params, views, window=self.cloud.window, shape=self.cloud.shape_params)
            if self.corrections.has_background:
                model = model + self.corrections.background_of(views.indices)
            yield views, model, self.measured[views.indices]

    @torch.no_grad()
    def removal_evidence(self, params):
        """:attr:`Evidence.removal` on all training projections (nats, pixels)."""
        positions, sigmas, weights = params["positions"], density.width_of(params), params["log_weights"].exp()
        gains, touched = positions.new_zeros(len(positions)), positions.new_zeros(len(positions))
        for views, model, measured in self._models(params):
            gain, touch = removal_gains(
                positions, sigmas, weights, views.rotations, views.offsets, views.pixel_size, model, measured,
                self.noise.negative_log_likelihood, self.cloud.window, self.cloud.halo(), views.gains,
            )  # fmt: skip
            gains += gain
            touched += touch
        return gains, touched

    @torch.no_grad()
    def covariance_evidence(self, params, chosen: torch.Tensor) -> torch.Tensor:
        """:attr:`Evidence.stretch` on all training projections: (M, 3, 3) nats per A^2."""
        positions, sigmas, weights = (
            params["positions"][chosen],
            density.width_of(params)[chosen],
            params["log_weights"][chosen].exp(),
        )
        gradients = positions.new_zeros(len(chosen), 3, 3)
        for views, model, measured in self._models(params):
            with torch.enable_grad():
                level = model.detach().requires_grad_(True)
                (slope,) = torch.autograd.grad(self.noise.negative_log_likelihood(level, measured).sum(), level)
            if views.gains is not None:  # an atom's footprint in a view is its gain times its own
                slope = slope * views.gains[:, None, None]
            gradients += covariance_gradients(
                positions, sigmas, weights, views.rotations, views.offsets, views.pixel_size, slope,
                self.cloud.window, self.cloud.halo(),
            )  # fmt: skip
        return gradients

    def report(self, record: RefineRecord) -> None:
        """Log a density pass (console, nerfstudio's writers, the viewer), with TPR / FPR when the
        true atoms are known."""
        if self.truth is not None:
            narrow = self.atom_mask(self.cloud.detached())
            scores = evaluate(self.cloud.positions.detach()[narrow].cpu().numpy(), self.truth)
            record.tpr, record.fpr = scores.tpr, scores.fpr
        values = record.as_dict()
        for key in ("before", "merged", "pruned", "split", "born", "after", "diffuse", "tpr", "fpr"):
            if key in values:
                writer.put_scalar(f"atoms/{key}", values[key], record.step)
        match = f", TPR {record.tpr:.3f} FPR {record.fpr:.3f}" if record.tpr is not None else ""
        CONSOLE.print(
            f"{'final pass' if record.final else f'step {record.step}'}: {record.before} -> {record.after} Gaussians "
            f"(merged {record.merged}, pruned {record.pruned}, split {record.split}, born {record.born}, "
            f"diffuse {record.diffuse}){match}"
        )
        self.monitor.refined(values)

    # ----------------------------------------------------------------------------- results
    def atom_mask(self, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(K,) bool: which Gaussians of ``params`` are atoms, those that are not diffuse
        (:func:`atomsplat.model.density.diffuse`)."""
        return ~density.diffuse(params, self.config.diffuse_width)

    @torch.no_grad()
    def atoms(self) -> Dict[str, np.ndarray]:
        """The atoms: the Gaussians that are not diffuse (:func:`atomsplat.model.density.diffuse`),
        positions (K, 3) A, sigmas (K,) A, weights (K,) as float64 numpy, and "uncertainty" (K, 3) A,
        the Cramer-Rao standard deviations of x, y, z, when training ran its final pass. Otherwise
        the merge-and-prune of a pass is applied to a copy (the model is not changed) and there are
        no uncertainties."""
        params = self.cloud.detached() if bool(self.finished) else self.strategy.cleanup(self.cloud.detached())
        atoms_only = self.atom_mask(params).cpu().numpy()
        atoms = {name: values[atoms_only] for name, values in atoms_of(params).items()}
        if bool(self.finished) and len(self.uncertainty) == len(atoms_only):
            atoms["uncertainty"] = self.uncertainty.cpu().double().numpy()[atoms_only]
        return atoms


def noise_model(series, config: AtomSplatModelConfig):
    """The data term and the background degree for ``series``: the config's, or, where it says
    "auto" / None, for counts their Poisson likelihood with a plane per projection (a pedestal, and a
    support film's ramp), for other data the paper's L1 without a background (says which on the
    console)."""
    counts = bool(series.counts)
    kind = config.loss if config.loss != "auto" else ("poisson" if counts else "l1")
    degree = config.background_degree if config.background_degree is not None else (1 if counts else -1)
    gain = series.gain if config.gain is None else config.gain
    if config.loss == "auto" or config.background_degree is None:
        likelihood = {"poisson": "their Poisson likelihood", "l1": "the L1 norm (the paper's)"}.get(kind, kind)
        names = {-1: "no background", 0: "a pedestal per projection", 1: "a plane per projection"}
        background = names.get(degree, f"a degree-{degree} background per projection")
        what = "not counts" if not counts else "detector counts" + (f", {gain:.6g} per data unit" if gain != 1 else "")
        if counts and series.subtracted:
            what += f" over an offset of {series.subtracted:.6g} data units (subtracted)"
        CONSOLE.print(
            f"{series.source or 'tilt series'}: {what}; fitting them by "
            f"{likelihood}, with {background} (--pipeline.model.loss and .background-degree choose otherwise)"
        )
    level = float(series.projections.max())
    return NoiseModel(kind, 1e-3 * level, gain, config.read_noise), degree


def species_prior(series, config: AtomSplatModelConfig, noise: NoiseModel) -> Optional[SpeciesPrior]:
    """The species prior the config asks for: "final" and "on" need a likelihood (counts) and
    isotropic Gaussians, "auto" ties where both are there, "off" never. Without the dataset's
    elements the prior ties the widths alone (:class:`SpeciesPrior`), and says so."""
    possible = noise.nats is not None and config.isotropic
    if config.tie_species in ("final", "on") and not possible:
        raise ValueError(f"tie_species '{config.tie_species}' needs counts and isotropic Gaussians")
    if config.tie_species == "off" or not possible:
        return None
    if not series.elements:
        CONSOLE.print(
            f'{series.source or "tilt series"}: no elements named (metadata.json "elements"): the atoms\' '
            "widths are tied to one, their weights stay free"
        )
    return SpeciesPrior(series.elements or [], config.species_spread, 0.5 * config.species_spread)


def _print_refinement(what: str, done) -> None:
    """One console line for a refinement (:class:`atomsplat.model.refinement.RefinementReport`)."""
    tied = ""
    if done.prior_before is not None:
        tied = f", species prior {done.prior_before:.4g} -> {done.prior_after:.4g} nats"
    CONSOLE.print(
        f"{what}: {done.iterations} L-BFGS iterations, "
        f"data term per pixel {done.before:.6g} -> {done.after:.6g}{tied} ({done.seconds:.0f} s)"
    )
