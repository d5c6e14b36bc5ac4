"""The atomsplat model: atoms as 3D Gaussians fitted to projections (a splatfacto subclass).

Parameters are physical and live in Angstrom in the sample frame: ``positions`` (K, 3) A,
``log_sigmas`` (K,) log A (or ``log_scales`` (K, 3) and ``quats`` (K, 4) without the isotropy
prior) and ``log_weights`` (K,): the log of each atom's integrated weight, in data units x A^2.
Cameras arrive in nerfstudio's scene units; :meth:`AtomSplatModel.views` turns them into view
matrices and offsets in A using the dataparser's scale, the one place where scene units are undone.

The model subclasses :class:`SplatfactoModel` so that nerfstudio's viewer and tools treat it as a
Gaussian model, but it never runs splatfacto's ``populate_modules`` (which needs gsplat on CUDA
and downloads LPIPS weights), nor its rasterizer, which alpha-composites.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import ase.io
import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE
from torch.nn import Parameter

from atomsplat.analysis.matching import evaluate
from atomsplat.data.dataset import display_image
from atomsplat.geometry import pixel_index, view_rotations, views_from_camera_to_worlds
from atomsplat.model import corrections, density
from atomsplat.model.losses import data_loss
from atomsplat.model.monitor import TrainingMonitor
from atomsplat.render.projector import (
    DEFAULT_WINDOW,
    backproject_points,
    detector_centres,
    project_anisotropic,
    project_isotropic,
)


@dataclass
class AtomSplatModelConfig(SplatfactoModelConfig):
    """Atoms as Gaussians. Lengths in Angstrom."""

    _target: Type = field(default_factory=lambda: AtomSplatModel)
    enable_collider: bool = False
    sh_degree: int = 0
    isotropic: bool = True
    """One width per atom (the paper's isotropy prior); False: full covariance (ablation)."""
    init_count: Optional[int] = None
    """Initial number of Gaussians; None: ``init_density`` x the volume of the support."""
    init_density: float = 0.08
    """Initial Gaussians per A^3 of the support (FCC gold has 0.059 atoms per A^3)."""
    init_support: Literal["hull", "sphere"] = "hull"
    """Where to draw initial positions: the visual hull of the projections, or the sphere seen by every view."""
    hull_threshold: float = 0.05
    """A point is in the hull when its pixel exceeds this fraction of the series maximum in nearly every view."""
    init_sigma: float = 0.6
    """Initial width, A."""
    min_sigma: float = 0.05
    """Widths are kept in [min_sigma, max_sigma] A after every step."""
    max_sigma: float = 2.0
    window: float = DEFAULT_WINDOW
    """Footprint half-width in widths; at 4 the truncated mass is below 1.3e-4 of an atom."""
    refine_every: int = 100
    """Steps between density-control passes."""
    densify_until: float = 0.5
    """Fraction of the training steps after which duplication by gradient stops."""
    split_until: float = 0.8
    """Fraction of the training steps after which wide Gaussians are no longer split, so that
    the last steps polish a fixed set; merging and pruning go on to the end."""
    densify_fraction: float = 0.05
    """Fraction of Gaussians duplicated per pass (largest mean position gradient). Copies are
    placed 1.1 x ``merge_distance`` apart, so that they survive the next merge unless they
    come back to one atom."""
    split_width: float = 1.5
    """Gaussians wider than this many times the median width cover several atoms: they are split."""
    prune_fraction: float = 0.15
    """Gaussians lighter than this fraction of the median weight are removed."""
    birth_every: int = 300
    """Steps between passes that add Gaussians where atoms are missing (0: never): the measured
    minus modelled projections are back-projected onto a grid, and every local maximum above the
    threshold that is ``merge_distance`` from all Gaussians becomes one. Runs with a density pass,
    until ``split_until``."""
    birth_threshold: float = 0.3
    """A Gaussian is born where the back-projected residual exceeds this fraction of the median
    Gaussian's peak value (and five times its noise level)."""
    birth_views: int = 45
    """Training projections (evenly spread) back-projected for births."""
    birth_spacing: float = 0.5
    """Spacing of the grid on which the residual is back-projected, A."""
    merge: bool = True
    """Minimum-distance prior: merge Gaussians closer than ``merge_distance`` (ablation: False)."""
    merge_distance: float = 1.6
    """Minimum distance between atoms, A."""
    merge_mode: Literal["weighted", "mean"] = "weighted"
    """"weighted": total weight at the weight-averaged centre; "mean": the paper's plain means."""
    merge_neighbours: int = 20
    """Above ``merge_neighbours_above`` Gaussians only this many nearest neighbours are searched."""
    merge_neighbours_above: int = 10000
    loss: Literal["l1", "l2", "poisson", "mixed"] = "l1"
    """Data term (:mod:`atomsplat.model.losses`): "l1" (the paper's), "l2", "poisson" for
    projections in counts, "mixed" for shot plus read noise (``gain``, ``read_noise``)."""
    gain: float = 1.0
    """Counts per data unit, for the "mixed" loss (1 when the projections are counts)."""
    read_noise: float = 0.0
    """Read-noise standard deviation in data units, for the "mixed" loss."""
    refine_shifts: bool = False
    """Learn one detector shift per projection (alignment) jointly with the atoms."""
    shifts_after: float = 0.05
    """Fraction of the training steps before the shifts start to move (the atoms take shape first)."""
    background_degree: int = -1
    """Learn a polynomial background of this degree per projection (0: constant, 1: plane,
    2: quadratic); -1: none, the projections are of the atoms alone."""
    seed: int = 0


class AtomSplatModel(SplatfactoModel):
    """Isotropic (or anisotropic) Gaussians, additive exact projector, L1 loss, density control."""

    config: AtomSplatModelConfig

    # ----------------------------------------------------------------------------- set-up
    def populate_modules(self):
        series = self.kwargs["metadata"]["tilt_series"]
        self.scale = float(self.kwargs["metadata"]["scale"])
        self.display_top = float(series.projections.max())
        self.generator = torch.Generator().manual_seed(self.config.seed)
        stack = torch.from_numpy(series.projections.astype(np.float32))
        self._setup_corrections(series, stack)
        signal = stack
        if "background" in self.view_params:
            signal = signal - self.display_top * corrections.background(
                self.view_params["background"].detach(), self._background_basis
            )
        positions = initial_positions(series, signal, self.config, self.generator)
        mass = float(signal.sum(dim=(1, 2)).mean()) * series.pixel_size**2
        log_weight = math.log(max(mass, 1e-12) / len(positions))
        params = {
            "positions": positions,
            "log_weights": torch.full((len(positions),), log_weight),
        }
        if self.config.isotropic:
            params["log_sigmas"] = torch.full((len(positions),), math.log(self.config.init_sigma))
        else:
            params["log_scales"] = torch.full((len(positions), 3), math.log(self.config.init_sigma))
            params["quats"] = torch.nn.functional.normalize(
                torch.randn(len(positions), 4, generator=self.generator), dim=1
            )
        self.gauss_params = torch.nn.ParameterDict({k: Parameter(v) for k, v in params.items()})
        self.background_color = torch.zeros(3)
        self.crop_box = None
        self.step = 0
        self.max_steps = 0
        self.optimizers = None
        self._reset_statistics()
        truth = self.kwargs["metadata"].get("ground_truth")
        self._truth = None if truth is None else ase.io.read(truth).get_positions()
        self.monitor = TrainingMonitor(self)  # the web viewer's panel and atoms; idle without a viewer

    def _setup_corrections(self, series, stack: torch.Tensor):
        """Per-projection parameters (:mod:`atomsplat.model.corrections`), indexed by projection:
        ``view_shifts`` (N, 2) A and ``background`` (N, T) in units of the series maximum, the
        latter fitted to the border of the measured ``stack`` (N, H, W)."""
        self.view_params = torch.nn.ParameterDict()
        indices = torch.as_tensor(np.asarray(self.kwargs["metadata"]["indices"]), dtype=torch.long)
        self.register_buffer("_train_indices", indices, persistent=False)
        count, height, width = series.shape
        if self.config.refine_shifts:
            self.view_params["view_shifts"] = Parameter(torch.zeros(count, 2))
            rotations = torch.from_numpy(view_rotations(series.tilt_angles, series.tilt_axis_angle)).float()
            self.register_buffer("_gauge", corrections.gauge_basis(rotations[self._train_indices]), persistent=False)
        if self.config.background_degree >= 0:
            basis = corrections.background_basis(height, width, self.config.background_degree)
            self.register_buffer("_background_basis", basis, persistent=False)
            fitted = corrections.fit_background(stack, basis)
            self.view_params["background"] = Parameter(fitted / self.display_top)

    def _reset_statistics(self):
        self._grad_sum = torch.zeros(self.num_points, device=self.positions.device)
        self._grad_steps = 0

    @property
    def positions(self) -> torch.Tensor:
        """(K, 3) centres, A, sample frame."""
        return self.gauss_params["positions"]

    @property
    def weights(self) -> torch.Tensor:
        """(K,) integrated weights (data units x A^2)."""
        return self.gauss_params["log_weights"].exp()

    @property
    def sigmas(self) -> torch.Tensor:
        """(K,) widths, A (for anisotropic Gaussians the geometric mean of the three scales)."""
        return density.width_of(self.gauss_params)

    @property
    def means(self) -> torch.Tensor:
        """(K, 3) centres in nerfstudio's scene units (what the viewer draws)."""
        return (self.positions * self.scale).detach()

    @property
    def num_points(self) -> int:
        return self.positions.shape[0]

    # splatfacto's attributes, read by nerfstudio's viewer and `ns-export gaussian-splat`. Shapes
    # and widths are exact (scene units, log scales); opacity and colour are display values: the
    # weight over the largest weight, as grey level and opacity.
    @property
    def scales(self) -> torch.Tensor:
        """(K, 3) log of the widths in scene units."""
        if self.config.isotropic:
            return torch.log(self.sigmas * self.scale)[:, None].expand(-1, 3).detach()
        return (self.gauss_params["log_scales"] + math.log(self.scale)).detach()

    @property
    def quats(self) -> torch.Tensor:
        """(K, 4) orientations (w, x, y, z); the identity for isotropic Gaussians."""
        if self.config.isotropic:
            return self.positions.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(self.num_points, 4)
        return self.gauss_params["quats"].detach()

    def _display_level(self) -> torch.Tensor:
        weights = self.weights.detach()
        return (weights / weights.max().clamp_min(1e-12)).clamp(1e-4, 1.0 - 1e-4)

    @property
    def opacities(self) -> torch.Tensor:
        """(K, 1) logit of weight / largest weight (display only)."""
        return torch.logit(self._display_level())[:, None]

    @property
    def features_dc(self) -> torch.Tensor:
        """(K, 3) logit of the grey level weight / largest weight (display only; sh_degree 0)."""
        return self.opacities.expand(-1, 3)

    @property
    def features_rest(self) -> torch.Tensor:
        """(K, 0, 3): no view dependence."""
        return self.positions.new_zeros(self.num_points, 0, 3)

    def covariances(self) -> torch.Tensor:
        """(K, 3, 3) covariances in A^2 of anisotropic Gaussians."""
        q = torch.nn.functional.normalize(self.gauss_params["quats"], dim=1)
        w, x, y, z = q.unbind(1)
        rot = torch.stack(
            [
                1 - 2 * (y * y + z * z),
                2 * (x * y - w * z),
                2 * (x * z + w * y),
                2 * (x * y + w * z),
                1 - 2 * (x * x + z * z),
                2 * (y * z - w * x),
                2 * (x * z - w * y),
                2 * (y * z + w * x),
                1 - 2 * (x * x + y * y),
            ],
            dim=1,
        ).view(-1, 3, 3)
        scales = self.gauss_params["log_scales"].exp()
        return rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2)

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]
        count = state_dict["gauss_params.positions"].shape[0]
        for name, param in self.gauss_params.items():
            self.gauss_params[name] = Parameter(param.new_zeros((count,) + param.shape[1:]))
        self._reset_statistics()
        return torch.nn.Module.load_state_dict(self, state_dict, **kwargs)

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        return {name: [param] for name, param in self.gauss_params.items()}

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {**self.get_gaussian_param_groups(), **{name: [param] for name, param in self.view_params.items()}}

    # ----------------------------------------------------------------------------- rendering
    def views(self, cameras: Cameras) -> Tuple[torch.Tensor, torch.Tensor, float]:
        """View matrices (V, 3, 3), detector offsets (V, 2) in A and pixel size in A of cameras.

        ORTHOPHOTO cameras are exact. Any other camera (the viewer's perspective camera) is shown
        as a parallel projection along its axis, with the pixel size that the perspective camera
        has at the rotation centre's distance, so that zooming and panning behave as expected.
        """
        c2w = cameras.camera_to_worlds.reshape(-1, 3, 4)
        fx = float(cameras.fx.reshape(-1)[0])
        rotations, shifts = views_from_camera_to_worlds(c2w)
        if cameras.camera_type.reshape(-1)[0].item() == CameraType.ORTHOPHOTO.value:
            pixel = 1.0 / (fx * self.scale)
        else:
            pixel = float(c2w[0, :, 3].norm()) / (fx * self.scale)
        centre = torch.stack(
            [
                cameras.width.reshape(-1) / 2.0 - cameras.cx.reshape(-1),
                cameras.height.reshape(-1) / 2.0 - cameras.cy.reshape(-1),
            ],
            dim=-1,
        )
        return rotations, shifts / self.scale - centre.to(shifts) * pixel, pixel

    def project(self, rotations, offsets, pixel_size, height, width, weights=None) -> torch.Tensor:
        """(V, H, W) projections of the Gaussians (optionally with other ``weights`` (K,))."""
        weights = self.weights if weights is None else weights
        if self.config.isotropic:
            return project_isotropic(
                self.positions, self.sigmas, weights, rotations, offsets, pixel_size, height, width, self.config.window
            )
        return project_anisotropic(
            self.positions,
            self.covariances(),
            weights,
            rotations,
            offsets,
            pixel_size,
            height,
            width,
            self.config.window,
        )

    def get_outputs(self, camera: Cameras) -> Dict[str, torch.Tensor]:
        """Model of a batch of same-sized training cameras: "projection" (V, H, W) in data units,
        with the learned shifts and background of their projections when these are enabled
        ("background" (V, H, W) is then returned too)."""
        height, width = int(camera.height.reshape(-1)[0]), int(camera.width.reshape(-1)[0])
        rotations, offsets, pixel = self.views(camera)
        metadata = camera.metadata or {}
        index = self._train_indices[torch.as_tensor(metadata["cam_idx"])] if "cam_idx" in metadata else None
        if index is not None and "view_shifts" in self.view_params:
            shifts = self.view_params["view_shifts"][index]
            offsets = offsets + (shifts if self.step >= self.config.shifts_after * self.max_steps else shifts.detach())
        outputs = {"projection": self.project(rotations, offsets, pixel, height, width)}
        if index is not None and "background" in self.view_params:
            outputs["background"] = self.display_top * corrections.background(
                self.view_params["background"][index], self._background_basis
            )
            outputs["projection"] = outputs["projection"] + outputs["background"]
        return outputs

    def _series_views(self, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """View matrices (V, 3, 3) and detector offsets (V, 2) A of projections ``indices`` (V,)
        of the whole series: known shifts, plus the learned ones when enabled."""
        series = self.kwargs["metadata"]["tilt_series"]
        chosen = indices.cpu().numpy()
        rotations = torch.from_numpy(view_rotations(series.tilt_angles[chosen], series.tilt_axis_angle)).to(
            self.positions
        )
        offsets = torch.from_numpy(series.shifts_or_zeros()[chosen]).to(self.positions)
        if "view_shifts" in self.view_params:
            offsets = offsets + self.view_params["view_shifts"][indices]
        return rotations, offsets

    @torch.no_grad()
    def model_of_projections(self, indices: torch.Tensor) -> torch.Tensor:
        """(V, H, W) the model of measured projections ``indices`` (V,) (of the whole series):
        the atoms seen from their views, with their known shifts, and their learned shifts and
        background when enabled."""
        series = self.kwargs["metadata"]["tilt_series"]
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.positions.device).reshape(-1)
        rotations, offsets = self._series_views(indices)
        _, height, width = series.shape
        projection = self.project(rotations, offsets, series.pixel_size, height, width)
        if "background" in self.view_params:
            coefficients = self.view_params["background"][indices]
            projection = projection + self.display_top * corrections.background(coefficients, self._background_basis)
        return projection

    def model_of_projection(self, index: int) -> torch.Tensor:
        """(H, W) the model of measured projection ``index``: :meth:`model_of_projections`."""
        return self.model_of_projections(torch.tensor([index]))[0]

    @torch.no_grad()
    def backprojected_residual(self) -> Tuple[np.ndarray, np.ndarray, float]:
        """The measured minus modelled projections of ``birth_views`` training projections,
        back-projected (:func:`backproject_points`) onto a grid of ``birth_spacing`` A over the
        Gaussians' bounding box (padded by ``merge_distance``).

        Returns the score (nx, ny, nz) in data units (a missing atom scores about its peak value),
        the grid's points (nx * ny * nz, 3) A, and the birth threshold: ``birth_threshold`` x the
        median peak ``w / (2 pi sigma^2)`` of the Gaussians, at least five robust standard
        deviations of the score.
        """
        series = self.kwargs["metadata"]["tilt_series"]
        train = self._train_indices
        picks = torch.linspace(0, len(train) - 1, min(self.config.birth_views, len(train))).round().long().unique()
        indices = train[picks.to(train.device)]
        residual = torch.from_numpy(series.projections[indices.cpu().numpy()]).to(self.positions) - torch.cat(
            [self.model_of_projections(chunk) for chunk in indices.split(8)]
        )
        positions = self.positions.detach().cpu().numpy()
        pad = self.config.merge_distance
        shape, points = density.grid_points(positions.min(0) - pad, positions.max(0) + pad, self.config.birth_spacing)
        rotations, offsets = self._series_views(indices)
        score = backproject_points(
            residual, rotations, offsets, series.pixel_size, torch.from_numpy(points).to(residual)
        )
        score = score.cpu().numpy().reshape(shape)
        peaks = self.weights / (2.0 * math.pi * self.sigmas**2)
        noise = 1.4826 * float(np.median(np.abs(score - np.median(score))))
        threshold = max(self.config.birth_threshold * float(peaks.median()), 5.0 * noise)
        return score, points, threshold

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, torch.Tensor]:
        """One camera for the viewer and evaluation: "projection" (H, W, 1), "rgb" (H, W, 3) in
        [0, 1] (the series maximum is white) and "depth" (H, W, 1): the weight-averaged distance
        of the Gaussians along each ray, in scene units (far where a ray meets no weight)."""
        camera = camera.to(self.device)
        height, width = int(camera.height.reshape(-1)[0]), int(camera.width.reshape(-1)[0])
        rotations, offsets, pixel = self.views(camera[0:1] if camera.shape else camera)
        projection = self.project(rotations, offsets, pixel, height, width)[0]
        origin = camera.camera_to_worlds.reshape(-1, 3, 4)[0, :, 3] / self.scale
        depth_a = (self.positions - origin) @ rotations[0, 2].to(self.positions)
        moment = self.project(rotations, offsets, pixel, height, width, weights=self.weights * depth_a)[0]
        seen = projection > 1e-3 * self.display_top
        depth = torch.where(seen, moment / projection.clamp_min(1e-12), torch.full_like(projection, 1e3)) * self.scale
        return {
            "rgb": display_image(projection, self.display_top),  # first: what the viewer shows by default
            "projection": projection[..., None],
            "depth": depth[..., None],
        }

    # ----------------------------------------------------------------------------- losses
    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        target = batch["image"].reshape(outputs["projection"].shape).to(outputs["projection"])
        loss = data_loss(
            outputs["projection"],
            target,
            self.config.loss,
            1e-3 * self.display_top,
            self.config.gain,
            self.config.read_noise,
        )
        return {self.config.loss: loss}

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        target = batch["image"].reshape(outputs["projection"].shape).to(outputs["projection"])
        residual = (outputs["projection"] - target).detach()
        return {
            "l1": residual.abs().mean(),
            "relative_l2": residual.norm() / target.norm().clamp_min(1e-12),
            "gaussians": torch.tensor(float(self.num_points)),
        }

    def get_image_metrics_and_images(self, outputs, batch):
        target = batch["image"].reshape(outputs["projection"].shape).to(outputs["projection"])
        residual = outputs["projection"] - target
        metrics = {
            "l1": float(residual.abs().mean()),
            "relative_l2": float(residual.norm() / target.norm().clamp_min(1e-12)),
            "gaussians": self.num_points,
        }
        shown = torch.cat([display_image(target, self.display_top), outputs["rgb"]], dim=1)
        return metrics, {"measured_vs_model": shown}

    # ----------------------------------------------------------------------------- density control
    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        if attributes.trainer is not None:
            self.max_steps = attributes.trainer.config.max_num_iterations
        return [
            TrainingCallback(
                [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._before_step, args=[attributes.optimizers]
            ),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after_step),
            *self.monitor.training_callbacks(attributes),
        ]

    def _before_step(self, optimizers: Optimizers, step: int):
        self.step = step
        self.optimizers = optimizers.optimizers
        self._bind_optimizers()

    def _bind_optimizers(self):
        """Point each optimizer at the live parameter of its name.

        nerfstudio's trainer builds the optimizers before it loads a checkpoint; loading resizes
        (replaces) the parameters, so on resume the optimizers would update stale copies. The
        loaded Adam state moves along when its shape fits the parameter.
        """
        for name, param in self.gauss_params.items():
            optimizer = self.optimizers.get(name)
            if optimizer is None or optimizer.param_groups[0]["params"][0] is param:
                continue
            state = optimizer.state.pop(optimizer.param_groups[0]["params"][0], {})
            fits = all(v.shape == param.shape for k, v in state.items() if k in ("exp_avg", "exp_avg_sq"))
            optimizer.param_groups[0]["params"] = [param]
            optimizer.state[param] = state if fits else {}

    @torch.no_grad()
    def _after_step(self, step: int):
        grad = self.positions.grad
        if grad is not None and grad.shape[0] == self._grad_sum.shape[0]:
            self._grad_sum += grad.norm(dim=1)
            self._grad_steps += 1
        self.clamp_widths()
        if "view_shifts" in self.view_params:
            shifts = self.view_params["view_shifts"].data
            shifts[self._train_indices] = corrections.remove_gauge(shifts[self._train_indices], self._gauge)
        if step > 0 and step % self.config.refine_every == 0:
            split = step <= self.config.split_until * self.max_steps
            self.refine(
                densify=step <= self.config.densify_until * self.max_steps,
                split=split,
                birth=split and self.config.birth_every > 0 and step % self.config.birth_every == 0,
            )

    @torch.no_grad()
    def clamp_widths(self):
        """Keep widths in [min_sigma, max_sigma] A (projected gradient step)."""
        low, high = math.log(self.config.min_sigma), math.log(self.config.max_sigma)
        for name in ("log_sigmas", "log_scales"):
            if name in self.gauss_params:
                self.gauss_params[name].data.clamp_(low, high)

    @torch.no_grad()
    def refine(self, densify: bool = False, split: bool = False, birth: bool = False) -> dict:
        """One density-control pass: merge (minimum distance), prune (small weights), then split
        Gaussians wider than ``split_width`` x the median width when ``split``, duplicate the
        ``densify_fraction`` with the largest mean position gradient when ``densify``, and add
        Gaussians where the residual of the model as it was shows missing atoms when ``birth``
        (:meth:`backprojected_residual`)."""
        residual = self.backprojected_residual() if birth and self.num_points > 0 else None
        params = {name: p.detach() for name, p in self.gauss_params.items()}
        count_before = len(params["positions"])
        source = torch.arange(count_before, device=self.positions.device)
        scores = self._grad_sum / max(self._grad_steps, 1)
        merged = 0
        if self.config.merge and count_before > 1:
            labels = density.cluster_labels(
                params["positions"].cpu().numpy(),
                self.config.merge_distance,
                self.config.merge_neighbours,
                self.config.merge_neighbours_above,
            )
            labels = torch.from_numpy(labels).to(source.device)
            params, chosen = density.merge(params, labels, self.config.merge_mode)
            merged = count_before - len(params["positions"])
            source, scores = _follow(source, chosen, -1), _follow(scores, chosen, 0.0)
        params, chosen = density.prune(params, self.config.prune_fraction)
        pruned = count_before - merged - len(chosen)
        source, scores = source[chosen], scores[chosen]
        widths = density.width_of(params)
        wide = torch.nonzero(widths > self.config.split_width * widths.median()).squeeze(1)
        chosen = wide if split else wide[:0]
        if densify:
            count = int(round(self.config.densify_fraction * len(scores)))
            chosen = torch.unique(torch.cat([chosen, torch.topk(scores, count).indices]))
        offset = torch.maximum(widths[chosen], widths.new_tensor(0.55 * self.config.merge_distance))
        params, new_source = density.duplicate(params, chosen, offset, self.generator)
        duplicated = len(chosen)
        source = _follow(source, new_source, -1)
        born = 0
        if residual is not None:
            score, points, threshold = residual
            found = density.residual_peaks(
                score,
                points,
                threshold,
                self.config.merge_distance,
                self.config.birth_spacing,
                params["positions"].cpu().numpy(),
            )
            # The weight that explains the residual's peak with a Gaussian of the median width.
            area = 2.0 * math.pi * float(density.width_of(params).median()) ** 2
            log_weights = torch.from_numpy(np.log(score.reshape(-1)[found] * area))
            params, new_source = density.append(params, torch.from_numpy(points[found]), log_weights)
            source, born = _follow(source, new_source, -1), len(found)
        self._replace(params, source)
        record = {
            "step": self.step,
            "before": count_before,
            "merged": merged,
            "pruned": pruned,
            "split": duplicated,
            "born": born,
            "after": self.num_points,
        }
        if self._truth is not None:
            report = evaluate(self.positions.cpu().numpy(), self._truth)
            record.update(tpr=report.tpr, fpr=report.fpr)
        for key, value in record.items():
            if key != "step":
                writer.put_scalar(f"atoms/{key}", value, self.step)
        match = f", TPR {record['tpr']:.3f} FPR {record['fpr']:.3f}" if "tpr" in record else ""
        CONSOLE.print(
            f"{f'step {self.step}' if self.training else 'final pass'}: {count_before} -> {self.num_points} Gaussians "
            f"(merged {merged}, pruned {pruned}, split {duplicated}, born {born}){match}"
        )
        self.monitor.refined(record)
        return record

    def _replace(self, params: Dict[str, torch.Tensor], source: torch.Tensor):
        """Install new parameters; Adam state follows ``source`` (-1: fresh state)."""
        inherit = source >= 0
        index = source.clamp_min(0)
        for name, values in params.items():
            old = self.gauss_params[name]
            new = Parameter(values.contiguous().to(old.device))
            self.gauss_params[name] = new
            optimizer = None if self.optimizers is None else self.optimizers.get(name)
            if optimizer is None:
                continue
            state = optimizer.state.pop(old, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    moved = state[key][index]
                    moved[~inherit] = 0.0
                    state[key] = moved
            optimizer.param_groups[0]["params"] = [new]
            optimizer.state[new] = state
        self._reset_statistics()

    # ----------------------------------------------------------------------------- results
    @torch.no_grad()
    def atoms(self) -> Dict[str, np.ndarray]:
        """The atoms as numpy arrays: positions (K, 3) A, sigmas (K,) A, weights (K,)."""
        return {
            "positions": self.positions.cpu().numpy().astype(np.float64),
            "sigmas": self.sigmas.cpu().numpy().astype(np.float64),
            "weights": self.weights.cpu().numpy().astype(np.float64),
        }


def _follow(values: torch.Tensor, chosen: torch.Tensor, fill) -> torch.Tensor:
    """Compose a per-Gaussian map with an index map: ``values[chosen]``, and ``fill`` where
    ``chosen`` is -1 (a Gaussian that no single old one became)."""
    valid = chosen >= 0
    out = torch.full(chosen.shape, fill, dtype=values.dtype, device=values.device)
    out[valid] = values[chosen[valid]]
    return out


def initial_positions(
    series, signal: torch.Tensor, config: AtomSplatModelConfig, generator: torch.Generator
) -> torch.Tensor:
    """(K, 3) random initial positions, A, sample frame, from the projections ``signal`` (N, H, W)
    of the atoms (the series less any fitted background).

    Candidates are uniform in the sphere seen by every projection (radius: half the smaller
    detector side). With ``init_support="hull"`` only candidates whose pixel exceeds
    ``hull_threshold`` x the series maximum in at least 95 % of the views are kept: the visual
    hull of the particle, which puts no Gaussians in the empty space around it. The count is
    ``init_density`` x the volume of the support unless ``init_count`` is set.
    """
    _, height, width = series.shape
    radius = 0.5 * min(height, width) * series.pixel_size
    volume = 4.0 / 3.0 * math.pi * radius**3
    rotations = torch.from_numpy(view_rotations(series.tilt_angles, series.tilt_axis_angle))
    shifts = torch.from_numpy(series.shifts_or_zeros())
    stack = signal
    level = config.hull_threshold * float(stack.max())

    def sphere(count):
        direction = torch.nn.functional.normalize(
            torch.randn(count, 3, generator=generator, dtype=torch.float64), dim=1
        )
        return direction * radius * torch.rand(count, 1, generator=generator, dtype=torch.float64) ** (1.0 / 3.0)

    def in_hull(points):
        centres = detector_centres(points, rotations, shifts)  # (V, K, 2)
        cols = pixel_index(centres[..., 0], width, series.pixel_size).clamp(0, width - 1)
        rows = pixel_index(centres[..., 1], height, series.pixel_size).clamp(0, height - 1)
        values = stack[torch.arange(len(stack))[:, None], rows, cols]
        return points[(values > level).float().mean(0) >= 0.95]

    if config.init_support == "sphere":
        return sphere(config.init_count or max(1, int(config.init_density * volume))).float()
    batch = max(20000, int(config.init_density * volume))
    hull = in_hull(sphere(batch))
    if len(hull) == 0:
        raise ValueError("initialisation: no point of the volume is bright in every projection (is the data empty?)")
    count = config.init_count or max(1, int(config.init_density * volume * len(hull) / batch))
    while len(hull) < count:
        hull = torch.cat([hull, in_hull(sphere(batch))])
    return hull[:count].float()
