"""The atom cloud: Gaussians with physical parameters, projected into views (no nerfstudio).

Parameters live in Angstrom in the sample frame (:mod:`atomsplat.geometry`):

- ``positions`` (K, 3), A;
- ``log_sigmas`` (K,), log A: one width per atom (the isotropy prior); without the prior
  ``log_scales`` (K, 3) and ``quats`` (K, 4) (w, x, y, z) of a full covariance instead;
- ``log_weights`` (K,): log of each atom's integrated weight, in data units x A^2 (a projection
  pixel holds weight per A^2; see :mod:`atomsplat.render.projector`).

:class:`Views` says what to project into: view matrices, detector offsets, the pixel grid and,
for views of measured projections, their indices in the series (which the per-view corrections
of :mod:`atomsplat.model.corrections` need). Every image of the model, for training, births,
the viewer, evaluation and export, is made by :meth:`AtomCloud.project` of such views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.nn import Parameter

from atomsplat.geometry import view_rotations
from atomsplat.model.density import width_of
from atomsplat.render.projector import DEFAULT_WINDOW, project_anisotropic, project_isotropic


@dataclass(frozen=True)
class Views:
    """V parallel-beam views on a pixel grid.

    Attributes:
        rotations: (V, 3, 3) view matrices ``M_v`` (detector point = ``(M_v r)[:2] + offset_v``).
        offsets: (V, 2) detector offsets, A: the known shifts of the projections, or where a free
            camera looks.
        pixel_size: detector pixel size, A.
        height, width: detector size in pixels.
        indices: (V,) long, the views' projections in the tilt series, or None for views of no
            measured projection (a viewer's free camera).
        gains: (V,) the factor each view's projection of the atoms is multiplied by (the dose of a
            projection relative to the series' mean: :meth:`atomsplat.model.corrections.ViewCorrections.solve_gains`),
            or None for 1.
    """

    rotations: torch.Tensor
    offsets: torch.Tensor
    pixel_size: float
    height: int
    width: int
    indices: Optional[torch.Tensor] = None
    gains: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.rotations.shape[0]

    def moved(self, offsets: torch.Tensor) -> "Views":
        """The same views with other detector offsets (V, 2) A."""
        return replace(self, offsets=offsets)

    def to(self, device) -> "Views":
        indices = None if self.indices is None else self.indices.to(device)
        gains = None if self.gains is None else self.gains.to(device)
        rotations, offsets = self.rotations.to(device), self.offsets.to(device)
        return replace(self, rotations=rotations, offsets=offsets, indices=indices, gains=gains)

    def cropped(self, start_y: torch.Tensor, start_x: torch.Tensor, height: int, width: int) -> "Views":
        """The same views seen through a window of ``height`` x ``width`` pixels per view, its first
        row and column ``start_y``, ``start_x`` (V,) long: pixel (i, j) of a cropped view is pixel
        (start_y + i, start_x + j) of the view (:func:`atomsplat.geometry.pixel_index`)."""
        shift = torch.stack([self.width / 2 - start_x - width / 2, self.height / 2 - start_y - height / 2], dim=1)
        offsets = self.offsets + shift.to(self.offsets) * self.pixel_size
        return replace(self, offsets=offsets, height=int(height), width=int(width))

    def split(self, size: int):
        """Yields the views in consecutive groups of at most ``size``."""
        for first in range(0, len(self), size):
            part = slice(first, first + size)
            indices = None if self.indices is None else self.indices[part]
            gains = None if self.gains is None else self.gains[part]
            rotations, offsets = self.rotations[part], self.offsets[part]
            yield replace(self, rotations=rotations, offsets=offsets, indices=indices, gains=gains)


def series_views(series, indices) -> Views:
    """The views of projections ``indices`` (V,) of a tilt series, with their known shifts."""
    chosen = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    picks = chosen.cpu().numpy()
    _, height, width = series.shape
    return Views(
        rotations=torch.from_numpy(view_rotations(series.tilt_angles[picks], series.tilt_axis_angle)).float(),
        offsets=torch.from_numpy(series.shifts_or_zeros()[picks]).float(),
        pixel_size=float(series.pixel_size),
        height=int(height),
        width=int(width),
        indices=chosen,
    )


class AtomCloud(torch.nn.Module):
    """K Gaussians (see the module docstring) and their exact additive projection.

    Args:
        positions: (K, 3) initial centres, A.
        sigma: initial width of every Gaussian, A.
        weight: initial integrated weight of every Gaussian (data units x A^2).
        isotropic: one width per Gaussian (True) or a full covariance (False, the ablation).
        min_sigma, max_sigma: widths are kept in this range, A (:meth:`clamp_widths`).
        window: footprint half-width in widths (:func:`atomsplat.render.projector.window_radii`).
        generator: random numbers for the initial orientations of anisotropic Gaussians.
        shape: an :class:`AtomShape` (core and halo) for every atom, or None: one Gaussian per atom.
    """

    def __init__(
        self,
        positions: torch.Tensor,
        sigma: float,
        weight: float,
        isotropic: bool = True,
        min_sigma: float = 0.05,
        max_sigma: float = 2.0,
        window: float = DEFAULT_WINDOW,
        generator: Optional[torch.Generator] = None,
        shape: Optional[AtomShape] = None,
    ):
        super().__init__()
        self.shape = shape
        count = len(positions)
        params = {"positions": positions.float(), "log_weights": torch.full((count,), math.log(weight))}
        if isotropic:
            params["log_sigmas"] = torch.full((count,), math.log(sigma))
        else:
            params["log_scales"] = torch.full((count, 3), math.log(sigma))
            params["quats"] = torch.nn.functional.normalize(torch.randn(count, 4, generator=generator), dim=1)
        self.params = torch.nn.ParameterDict({k: Parameter(v) for k, v in params.items()})
        self.isotropic = isotropic
        self.min_sigma, self.max_sigma, self.window = min_sigma, max_sigma, window

    # ----------------------------------------------------------------------------- parameters
    @property
    def positions(self) -> torch.Tensor:
        """(K, 3) centres, A, sample frame."""
        return self.params["positions"]

    @property
    def weights(self) -> torch.Tensor:
        """(K,) integrated weights (data units x A^2)."""
        return self.params["log_weights"].exp()

    @property
    def sigmas(self) -> torch.Tensor:
        """(K,) widths, A (for anisotropic Gaussians the geometric mean of the three scales)."""
        return width_of(self.params)

    @property
    def count(self) -> int:
        return self.params["positions"].shape[0]

    def covariances(self) -> torch.Tensor:
        """(K, 3, 3) covariances in A^2 of anisotropic Gaussians (:func:`covariances`)."""
        return covariances(self.params)

    def detached(self) -> Dict[str, torch.Tensor]:
        """The parameters as plain tensors (what :mod:`atomsplat.model.density` operates on)."""
        return {name: p.detach() for name, p in self.params.items()}

    def install(self, params: Dict[str, torch.Tensor]) -> Dict[str, Parameter]:
        """Replace the parameters by new tensors (of any count); returns the new Parameters."""
        for name, values in params.items():
            self.params[name] = Parameter(values.contiguous().to(self.params[name].device))
        return dict(self.params.items())

    def resize(self, count: int) -> None:
        """Zero parameters of ``count`` Gaussians, for a checkpoint of another size to load into."""
        self.install({name: p.new_zeros((count,) + p.shape[1:]) for name, p in self.params.items()})

    @torch.no_grad()
    def clamp_widths(self) -> None:
        """Keep widths in [min_sigma, max_sigma] A and the halo at most :data:`MAX_HALO_RATIO` x the
        core (a projected gradient step)."""
        low, high = math.log(self.min_sigma), math.log(self.max_sigma)
        for name in ("log_sigmas", "log_scales"):
            if name in self.params:
                self.params[name].data.clamp_(low, high)
        if self.shape is not None:
            self.shape.params["halo_log_excess"].data.clamp_(max=MAX_HALO_LOG_EXCESS)

    # ----------------------------------------------------------------------------- projection
    def project(self, views: Views, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(V, H, W) projections of the Gaussians into ``views`` (:func:`project`)."""
        return project(self.params, views, weights, self.window, self.shape_params)

    def halo(self) -> Optional[Tuple[float, float]]:
        """(fraction, ratio) of the atoms' halo (:class:`AtomShape`), or None for one Gaussian per atom."""
        if self.shape is None:
            return None
        return float(self.shape.fraction().detach()), float(self.shape.ratio().detach())

    @property
    def shape_params(self) -> Optional[Dict[str, torch.Tensor]]:
        """The :class:`AtomShape`'s parameters, or None for one Gaussian per atom."""
        return None if self.shape is None else dict(self.shape.params.items())

    def atoms(self) -> Dict[str, np.ndarray]:
        """The Gaussians as atoms (:func:`atoms_of`)."""
        return atoms_of(self.detached())


def atoms_of(params: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Gaussian parameters (see the module docstring) as float64 numpy arrays: "positions" (K, 3)
    A, "sigmas" (K,) A (geometric mean of the scales of anisotropic Gaussians), "weights" (K,)."""
    return {
        "positions": params["positions"].detach().cpu().double().numpy(),
        "sigmas": width_of(params).detach().cpu().double().numpy(),
        "weights": params["log_weights"].detach().exp().cpu().double().numpy(),
    }


MAX_HALO_RATIO = 3.0
"""The halo is at most this many times as wide as the core. Fitted to abTEM's potentials blurred by a
probe the ratio is 1.6-1.7, and training ends at 1.6-1.75 (2 to 5.5 nm Si, FePt, SiGeSn, 8e3 to
1.6e5 e/A^2). At low dose the likelihood hardly tells shapes of one overall width apart (2 nm Si
at 8e3: fraction 0.35 / ratio 1.73, 0.19 / 1.92 and 0.11 / 3 fit to 2e-4 nats a pixel), and
without the bound 3 of 29 runs slid to one wide Gaussian and a spike (fraction 0.98-1, ratio
13-14, the core at the narrowest width, 0.05 A): its positions follow the noise in single pixels
(31 pm for 24) and its uncertainties were a quarter of the errors."""
MAX_HALO_LOG_EXCESS = math.log(MAX_HALO_RATIO - 1.0)
"""The bound of :data:`MAX_HALO_RATIO` on ``halo_log_excess`` (ratio = 1 + exp)."""


# How far beyond a bound a parameter counts as on it: the projected step stores the bound in float32.
ON_BOUND = 1e-5


def held(values: torch.Tensor, low: Optional[float] = None, high: Optional[float] = None) -> torch.Tensor:
    """``values`` clamped to [low, high] for an objective that is flat beyond the bounds, as the
    projected step of :meth:`AtomCloud.clamp_widths` leaves it, but not on them: a value on a bound
    (within :data:`ON_BOUND`) keeps its gradient, so that an optimizer can move it back inside.
    (``torch.clamp`` passes no gradient there: a width the projected step had set on its bound stayed
    there through the final refinement, whatever the data or the species prior asked.)"""
    clamped = values.clamp(low, high)
    inside = torch.ones_like(values, dtype=torch.bool)
    if low is not None:
        inside &= values >= low - ON_BOUND
    if high is not None:
        inside &= values <= high + ON_BOUND
    return torch.where(inside, values - (values - clamped).detach(), clamped)


def bounded_shape(shape: Optional[Dict[str, torch.Tensor]]) -> Optional[Dict[str, torch.Tensor]]:
    """``shape`` (:class:`AtomShape`'s parameters) with the halo's ratio held to :data:`MAX_HALO_RATIO`
    (:func:`held`)."""
    if shape is None:
        return None
    return {**shape, "halo_log_excess": held(shape["halo_log_excess"], high=MAX_HALO_LOG_EXCESS)}


class AtomShape(torch.nn.Module):
    """Each atom as two concentric Gaussians: a core of width sigma and a halo of width
    ``ratio * sigma`` holding the ``fraction`` of its weight, both shared by all atoms.

    One Gaussian per atom misses the long tails of an atom's projected potential (its screened
    Coulomb field, blurred by the probe): fitted to abTEM's Lobato potential of Si blurred by a
    0.5 A probe, one Gaussian leaves a 15 % residual (Poisson-weighted), two concentric ones 2 %
    (fraction 0.36, ratio 1.63; Au: 0.18, 1.70). The parameters: ``halo_logit`` (fraction =
    sigmoid) and ``halo_log_excess`` (ratio = 1 + exp).
    """

    def __init__(self, fraction: float = 0.25, ratio: float = 1.65):
        super().__init__()
        self.params = torch.nn.ParameterDict(
            {
                "halo_logit": Parameter(torch.tensor(math.log(fraction / (1.0 - fraction)))),
                "halo_log_excess": Parameter(torch.tensor(math.log(ratio - 1.0))),
            }
        )

    def fraction(self, params=None) -> torch.Tensor:
        return torch.sigmoid((params or self.params)["halo_logit"])

    def ratio(self, params=None) -> torch.Tensor:
        return 1.0 + torch.exp((params or self.params)["halo_log_excess"])


def project(
    params: Dict[str, torch.Tensor],
    views: Views,
    weights: Optional[torch.Tensor] = None,
    window: float = DEFAULT_WINDOW,
    shape: Optional[Dict[str, torch.Tensor]] = None,
) -> torch.Tensor:
    """(V, H, W) projections of Gaussians with parameters ``params`` (see the module docstring) into
    ``views``: mean density per pixel, data units, differentiable in every parameter and in the
    views' offsets. ``weights`` (K,) replaces the Gaussians' own (e.g. weights times depth, for a
    depth map). ``shape``: the parameters of an :class:`AtomShape` (core and halo), or None: one
    Gaussian per atom. Each view's image is times its gain when ``views.gains`` is set."""
    weights = params["log_weights"].exp() if weights is None else weights
    dtype = params["positions"].dtype
    args = (views.rotations.to(dtype), views.offsets.to(dtype), views.pixel_size, views.height, views.width, window)
    if "log_sigmas" not in params:
        images = project_anisotropic(params["positions"], covariances(params), weights, *args)
    elif shape is None:
        images = project_isotropic(params["positions"], params["log_sigmas"].exp(), weights, *args)
    else:
        sigmas = params["log_sigmas"].exp()
        fraction = torch.sigmoid(shape["halo_logit"]).to(dtype)
        ratio = (1.0 + torch.exp(shape["halo_log_excess"])).to(dtype)
        positions = torch.cat([params["positions"], params["positions"]])
        both = (torch.cat([sigmas, ratio * sigmas]), torch.cat([(1 - fraction) * weights, fraction * weights]))
        images = project_isotropic(positions, *both, *args)
    return images if views.gains is None else images * views.gains.to(images)[:, None, None]


def covariances(params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """(K, 3, 3) covariances in A^2 of anisotropic Gaussians: ``R diag(exp(log_scales))^2 R^T``
    with R the rotation of the unit quaternion ``quats`` (w, x, y, z)."""
    q = torch.nn.functional.normalize(params["quats"], dim=1)
    w, x, y, z = q.unbind(1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).view(-1, 3, 3)  # fmt: skip
    scales = params["log_scales"].exp()
    return rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2)
