"""The implicit-neural-representation baseline as a nerfstudio model: ``ns-train atomsplat-inr``.

The same network and data term as :func:`atomsplat.analysis.inr.fit_inr` (:class:`SliceFit`): a
training step draws x slices of the voxel grid and fits their projections in every training view
at once (the slice's column in each view), so the data manager's views of the step are not used.
What nerfstudio adds is the rest of its tools: the viewer, ``ns-eval`` on the held-out
projections, ``ns-render``, checkpoints, ``--load-dir``.

Images: the network is sampled on the voxel grid (:meth:`INRModel.density_volume`, kept until the
next training step) and projected along each camera's axis by trilinear ray marching
(:func:`march`), for dataset cameras and the viewer's free camera alike. The outputs are those of
:class:`atomsplat.model.atomsplat_model.AtomSplatModel` ("rgb", "normalized_projection",
"accumulation", "depth"); its atoms, for ``ns-eval`` and the benchmark, are the traced maxima of
the volume (:func:`atomsplat.analysis.tracing.trace_atoms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Type

import ase.io
import numpy as np
import torch
import tyro
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model, ModelConfig
from torch.nn import Parameter

from atomsplat.analysis.image_metrics import projection_scores
from atomsplat.analysis.inr import SliceFit
from atomsplat.analysis.matching import evaluate
from atomsplat.analysis.tracing import trace_atoms
from atomsplat.data.dataset import display_image
from atomsplat.model.camera_views import camera_views
from atomsplat.model.cloud import Views

MARCH_CHUNK = 1 << 22  # samples per chunk of ray marching (memory: a few floats each)


@dataclass
class INRModelConfig(ModelConfig):
    """An implicit neural representation of the density (:mod:`atomsplat.analysis.inr`). Lengths in A."""

    _target: Type = field(default_factory=lambda: INRModel)
    # nerfstudio's generic model options that mean nothing here: fixed, and hidden from the CLI
    enable_collider: tyro.conf.Suppress[bool] = False
    collider_params: tyro.conf.Suppress[Optional[Dict[str, float]]] = None
    loss_coefficients: tyro.conf.Suppress[Dict[str, float]] = field(default_factory=dict)
    eval_num_rays_per_chunk: tyro.conf.Suppress[int] = 1 << 15
    prompt: tyro.conf.Suppress[Optional[str]] = None

    levels: int = 8
    """Feature grids of the network (:class:`atomsplat.analysis.inr.GridField`)."""
    features: int = 2
    """Learned features per grid vertex."""
    base_resolution: int = 4
    """Cells along a side of the coarsest grid (the finest cell is the pixel size)."""
    hidden: int = 64
    """Width of the network's hidden layer."""
    slices_per_step: int = 8
    """x slices (detector columns) fitted per step, each in every training view."""
    march_step: float = 0.5
    """Step of the ray marching that renders images, in voxels."""
    seed: int = 0
    """Seed of the network's initial weights and of the draw of slices."""


class INRModel(Model):
    """A coordinate network fitted to the training projections; images by ray marching its volume."""

    config: INRModelConfig

    def populate_modules(self):
        metadata = self.kwargs["metadata"]
        self.series = metadata["tilt_series"]
        """The :class:`atomsplat.data.series.TiltSeries` trained on."""
        self.scale = float(metadata["scale"])
        """nerfstudio scene units per A (the dataparser's scale)."""
        projections = self.series.projections
        self.level = float(projections.max())
        """The series maximum, data units: white in images."""
        self.data_range = float(projections.max() - projections.min())
        """The measured series' maximum minus its minimum: the range of PSNR and SSIM."""
        train = np.asarray(metadata["indices"])
        shifts = self.series.shifts_or_zeros()[train]
        config = self.config
        self.fit = SliceFit(
            projections[train],
            self.series.tilt_angles[train],
            self.series.pixel_size,
            tilt_axis_angle=self.series.tilt_axis_angle,
            shifts=shifts if np.any(shifts) else None,
            seed=config.seed,
            levels=config.levels,
            features=config.features,
            base_resolution=config.base_resolution,
            hidden=config.hidden,
        )
        self.field = self.fit.field
        self.generator = torch.Generator().manual_seed(config.seed)
        truth = metadata.get("ground_truth")
        self.truth = None if truth is None else ase.io.read(truth).get_positions()
        """(M, 3) true atoms, A, when the dataset has them (``ns-eval`` then scores traced atoms)."""
        self._volume = None
        self._atom_scores = None

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {"fields": list(self.field.parameters())}

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        return [TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._forget)]

    def _forget(self, step: int) -> None:
        """The network changed: its volume and atoms are made again when next asked for."""
        self._volume, self._atom_scores = None, None

    # ----------------------------------------------------------------------------- training
    def get_outputs(self, camera: Cameras) -> Dict[str, torch.Tensor]:
        """Training: "mse", the data term of ``slices_per_step`` random x slices in every training
        view (the cameras are not used, see the module notes). Otherwise the images of
        :meth:`get_outputs_for_camera` of the first camera."""
        if not self.training:
            return self.get_outputs_for_camera(camera)
        self.fit.to(self.device)
        return {"mse": self.fit.loss(self.fit.draw(self.config.slices_per_step, self.generator))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        return {"mse": outputs["mse"]}

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        return {"mse": outputs["mse"].detach()} if "mse" in outputs else {}

    # ----------------------------------------------------------------------------- images
    @torch.no_grad()
    def density_volume(self) -> np.ndarray:
        """(W, H, depth) float32 density on the voxel grid of :mod:`atomsplat.analysis.baselines`
        (voxel = pixel size, centred on the origin), data units per A."""
        if self._volume is None:
            self.fit.to(self.device)
            self._volume = torch.from_numpy(self.fit.volume()).to(self.device)
        return self._volume.cpu().numpy()

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, torch.Tensor]:
        """One camera: "rgb" (H, W, 3) grey in [0, 1], "normalized_projection" (H, W, 1) the projection
        over the series maximum, "accumulation" the same clipped to [0, 1], "depth" (H, W, 1) the
        density-weighted distance along each ray, scene units (as the atomsplat model's)."""
        camera = camera.to(self.device)
        views = camera_views(camera[0:1] if camera.shape else camera, self.scale)
        self.density_volume()
        projection, depth_a = march(self._volume, self.fit.pixel_size, views, self.config.march_step)
        origin = camera.camera_to_worlds.reshape(-1, 3, 4)[0, :, 3] / self.scale
        seen = projection > 1e-3 * self.level
        along = depth_a - float(origin @ views.rotations[0, 2].to(origin))
        depth = torch.where(seen, along, torch.full_like(along, 1e3)) * self.scale
        normalized = projection[..., None] / max(self.level, 1e-30)
        return {
            "rgb": display_image(projection, self.level),
            "normalized_projection": normalized,
            "accumulation": normalized.clamp(0.0, 1.0),
            "depth": depth[..., None],
        }

    def get_image_metrics_and_images(self, outputs, batch):
        """As :meth:`AtomSplatModel.get_image_metrics_and_images`: projection scores on the data's
        own scale, and the traced atoms' TPR / FPR / RMSE when the dataset has its true atoms."""
        model = outputs["normalized_projection"][..., 0] * self.level
        target = batch["image"].reshape(model.shape).to(model)
        metrics = projection_scores(model, target, self.data_range)
        metrics.update(self.atom_scores())
        shown = torch.cat([display_image(target, self.level), outputs["rgb"]], dim=1)
        return metrics, {"measured_vs_model": shown}

    def atoms(self) -> Dict[str, np.ndarray]:
        """The traced maxima of :meth:`density_volume` (:func:`trace_atoms`, the paper's settings):
        "positions" (K, 3) A, sample frame, and "intensities" (K,) their peak densities."""
        traced = trace_atoms(self.density_volume(), self.fit.pixel_size)
        return {"positions": traced.positions, "intensities": traced.intensities}

    def atom_scores(self) -> Dict[str, float]:
        """The traced atoms against the true ones ("atoms", "tpr", "fpr", "rmse" when any matched);
        empty without a ground truth."""
        if self.truth is None:
            return {}
        if self._atom_scores is None:
            scores = evaluate(self.atoms()["positions"], self.truth)
            self._atom_scores = {"atoms": float(scores.n_pred), "tpr": float(scores.tpr), "fpr": float(scores.fpr)}
            if scores.rmse is not None:
                self._atom_scores["rmse"] = float(scores.rmse)
        return dict(self._atom_scores)


def march(volume: torch.Tensor, voxel: float, views: Views, step: float = 0.5):
    """Parallel projection of a voxel volume into one view by trilinear ray marching.

    Args:
        volume: (W, H, D) density indexed [ix, iy, iz], voxel ``voxel`` A, voxel centres at
            ``(k + 0.5 - n / 2) * voxel`` on each axis (outside it the density is 0).
        voxel: voxel edge, A.
        views: one view (:class:`Views`): detector point = ``(M r)[:2] + offset``.
        step: distance between samples along each ray, in voxels.

    Returns:
        (H', W') line integrals (density x A) at the view's pixel centres, and (H', W') the
        density-weighted mean of ``(M r)[2]`` along each ray, A (0 where the ray meets nothing).
    """
    shape = torch.tensor(volume.shape, dtype=volume.dtype, device=volume.device)
    half = (shape - 1.0) / 2.0 * voxel  # voxel centres at +-half on each axis (align_corners)
    reach = float(0.5 * voxel * shape.norm()) + voxel
    dz = step * voxel
    zs = torch.arange(-reach, reach + 0.5 * dz, dz, dtype=volume.dtype, device=volume.device)
    rotation = views.rotations[0].to(volume)
    offset = views.offsets[0].to(volume)
    q, height, width = views.pixel_size, views.height, views.width
    xs = (torch.arange(width, dtype=volume.dtype, device=volume.device) + 0.5 - width / 2.0) * q - offset[0]
    ys = (torch.arange(height, dtype=volume.dtype, device=volume.device) + 0.5 - height / 2.0) * q - offset[1]
    grid_input = volume.permute(2, 1, 0)[None, None]  # (1, 1, D, H, W): grid_sample's (z, y, x) order
    rows = max(1, MARCH_CHUNK // max(1, width * len(zs)))
    mass, moment = [], []
    for first in range(0, height, rows):
        y = ys[first : first + rows]
        local = torch.stack(torch.broadcast_tensors(xs[None, :, None], y[:, None, None], zs[None, None, :]), dim=-1)
        points = local @ rotation  # r = M^T d for each detector point d (rows of local)
        samples = torch.nn.functional.grid_sample(
            grid_input, (points / half)[None], mode="bilinear", padding_mode="zeros", align_corners=True
        )[0, 0]  # (rows, W', S)
        mass.append(samples.sum(-1) * dz)
        moment.append((samples * zs).sum(-1) * dz)
    mass, moment = torch.cat(mass), torch.cat(moment)
    return mass, torch.where(mass.abs() > 0, moment / mass.where(mass.abs() > 0, torch.ones_like(mass)), mass)
