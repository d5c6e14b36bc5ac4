"""Implicit-neural-representation baseline: a coordinate network fitted to the projections.

The paper's third baseline (DESIGN.md, "The method in the paper"): a network that maps a 3-D point
(A, sample frame) to a density, trained so that its line integrals reproduce the tilt series, then
sampled on the voxel grid and traced (:mod:`atomsplat.analysis.tracing`).

Network (:class:`GridField`, pure torch): multiresolution feature grids in the manner of
Instant-NGP (Mueller et al. 2022) without its hash: the volumes here are small enough to store
every level in full, and trilinear reads of dense grids (``grid_sample``) are far faster on a CPU
than hashed gathers in plain torch. A small MLP maps the concatenated features to a density through
a softplus, so that it is never negative.

Rendering: the network is evaluated at the centres of the voxel grid of
:mod:`atomsplat.analysis.baselines` (voxel size = pixel size) and the volume is projected with the
same ray-by-voxel matrix as FBP and SIRT (:func:`atomsplat.analysis.baselines.system_matrix`:
ASTRA's Joseph projector, one sample per voxel row along each ray, i.e. the ray integral on the
voxel grid). Each detector column is an independent slice, so a training step draws a few columns
(x slices) at random, evaluates the network on those slices only and compares their projections in
every view with the data: mean squared error (the likelihood of Gaussian noise), Adam.

On the bundled 201-atom demo series (-90:90:3, noise sigma 50) the loss reaches the noise floor in
about 300 steps of 8 slices; the default 500 steps take about 90 s on two CPU cores, and the traced
volume finds 200 of the 201 atoms with no false one.

Units: the returned volume is in data units per A, like the baselines' (the network itself works
on the data divided by their largest absolute value).
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from atomsplat.analysis.baselines import align_projections, check_series, sinograms, system_matrix, volume_depth
from atomsplat.geometry import pixel_centers


class GridField(nn.Module):
    """Density at 3-D points from multiresolution feature grids and a small MLP.

    Every level is a dense grid of learned F-vectors at the vertices of a cubic lattice over the
    cube ``[-half_extent, half_extent]^3`` (A), read by trilinear interpolation
    (``torch.nn.functional.grid_sample``, ``align_corners=True``: the outer vertices lie on the
    cube's faces; points outside read the faces). Resolutions grow geometrically from
    ``base_resolution`` cells to the finest cell ``finest_cell``. The concatenated features of all
    levels pass through an MLP with one hidden ReLU layer and a softplus, so the density is never
    negative. Size: with the default 8 levels, 1.2-1.4 times ``F n**3`` parameters, n the finest
    grid's cells along a side (``2 * half_extent / finest_cell``): 3.1 million for a 104-voxel
    volume, 53 million for a 280-voxel one.

    Args:
        half_extent: half the side (A) of the cube, centred on the origin, that the grids cover.
        levels: number of grids L.
        features: learned features per vertex F.
        base_resolution: cells along a side of the coarsest grid.
        finest_cell: cell size (A) of the finest grid.
        hidden: width of the MLP's hidden layer.
    """

    def __init__(
        self,
        half_extent: float,
        levels: int = 8,
        features: int = 2,
        base_resolution: int = 4,
        finest_cell: float = 0.25,
        hidden: int = 64,
    ):
        super().__init__()
        if not half_extent > 0 or not finest_cell > 0:
            raise ValueError("half_extent and finest_cell must be positive lengths in A")
        if min(levels, features, hidden, base_resolution) < 1:
            raise ValueError("levels, features, hidden and base_resolution must be positive")
        self.half_extent = float(half_extent)
        finest = max(base_resolution, math.ceil(2.0 * half_extent / finest_cell))
        growth = (finest / base_resolution) ** (1.0 / max(levels - 1, 1))
        self.resolutions = [round(base_resolution * growth**level) for level in range(levels)]
        self.grids = nn.ParameterList(
            nn.Parameter(torch.empty(1, features, r + 1, r + 1, r + 1).uniform_(-1e-4, 1e-4)) for r in self.resolutions
        )
        self.mlp = nn.Sequential(nn.Linear(levels * features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        with torch.no_grad():  # start nearly empty: softplus(-4) = 0.018
            self.mlp[-1].bias.fill_(-4.0)

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """(M, L * F) interpolated features of points (M, 3) in A."""
        where = (points / self.half_extent).reshape(1, -1, 1, 1, 3)
        feats = [
            nn.functional.grid_sample(g, where, mode="bilinear", padding_mode="border", align_corners=True)
            for g in self.grids
        ]  # each (1, F, M, 1, 1)
        return torch.cat(feats, dim=1)[0, :, :, 0, 0].T

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Density (M,) >= 0 at points (M, 3) in A."""
        return nn.functional.softplus(self.mlp(self.encode(points))[:, 0])


@dataclass
class INRResult:
    """A fitted implicit representation.

    Attributes:
        field: the trained :class:`GridField` (density in units of ``scale`` per A).
        volume: (W, H, depth) float32 density on the voxel grid of
            :mod:`atomsplat.analysis.baselines`, data units per A.
        scale: the data's largest absolute value, by which the network's output is multiplied.
        losses: mean squared error at every step, in network units (data / (scale * p)).
    """

    field: GridField
    volume: np.ndarray
    scale: float
    losses: list


class _Project(torch.autograd.Function):
    """``matrix @ x`` for a constant sparse matrix, with its transpose given for the backward pass
    (torch would transpose the matrix at every backward call)."""

    @staticmethod
    def forward(ctx, matrix, matrix_t, x):
        ctx.matrix_t = matrix_t
        return matrix @ x

    @staticmethod
    def backward(ctx, grad):
        return None, None, ctx.matrix_t @ grad


def _torch_csr(a) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor (sharing nothing)."""
    return torch.sparse_csr_tensor(
        torch.from_numpy(a.indptr.astype(np.int64)),
        torch.from_numpy(a.indices.astype(np.int64)),
        torch.from_numpy(a.data.astype(np.float32)),
        size=a.shape,
        check_invariants=False,
    )


def _slice_points(xs: torch.Tensor, ys: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
    """(B * depth * H, 3) voxel centres of the x slices ``xs`` (B,), each slice ordered as the
    columns of :func:`system_matrix` (index ``iz * H + iy``)."""
    z, y = torch.meshgrid(zs, ys, indexing="ij")  # (depth, H)
    yz = torch.stack([y, z], dim=-1).reshape(1, -1, 2).expand(len(xs), -1, -1)
    x = xs[:, None, None].expand(-1, yz.shape[1], 1)
    return torch.cat([x, yz], dim=-1).reshape(-1, 3)


class SliceFit:
    """The INR's data term on a tilt series, one training step at a time (what :func:`fit_inr`
    loops over, and what the nerfstudio method ``atomsplat-inr`` steps through).

    The projections are aligned (:func:`atomsplat.analysis.baselines.align_projections`) and
    divided by their largest absolute value ``scale``; the network (:attr:`field`, a
    :class:`GridField`) learns the density in those units. :meth:`loss` draws x slices of the
    voxel grid, evaluates the network on them and compares their projections (the slice's column
    in every view, :func:`atomsplat.analysis.baselines.system_matrix`) with the data: the mean
    squared error in network units.

    Args:
        projections: (N, H, W) float projections.
        tilt_angles: (N,) degrees.
        pixel_size: p, A (also the voxel size).
        depth: voxels along z; default H.
        tilt_axis_angle: in-plane tilt-axis angle, degrees.
        shifts: (N, 2) known detector shifts in A, or None.
        seed: seeds the network's initial weights.
        **network: keyword arguments of :class:`GridField` (``finest_cell`` defaults to p).
    """

    def __init__(
        self,
        projections,
        tilt_angles,
        pixel_size: float,
        depth: int | None = None,
        tilt_axis_angle: float = 0.0,
        shifts=None,
        seed: int = 0,
        **network,
    ):
        proj, angles = check_series(projections, tilt_angles, pixel_size)
        n, h, w = proj.shape
        self.shape = (w, h, volume_depth(depth, h))
        """(W, H, depth): the voxel grid, voxel size ``pixel_size``, centred on the origin."""
        self.pixel_size = float(pixel_size)
        proj = align_projections(proj, pixel_size, tilt_axis_angle, shifts)
        self.scale = float(np.abs(proj).max()) or 1.0
        # Sinograms (N * H, W) in network units: data / scale, line integrals in voxel lengths.
        self.target = torch.from_numpy(sinograms(proj) / np.float32(self.scale * pixel_size))
        a = system_matrix(angles, h, self.shape[2])
        with warnings.catch_warnings():  # torch calls its sparse CSR support beta
            warnings.simplefilter("ignore", UserWarning)
            self.matrix, self.matrix_t = _torch_csr(a), _torch_csr(a.T.tocsr())
        self.xs, self.ys, self.zs = (torch.from_numpy(pixel_centers(m, pixel_size)).float() for m in self.shape)
        network.setdefault("finest_cell", pixel_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.field = GridField(pixel_size * max(self.shape) / 2.0, **network)

    def to(self, device) -> "SliceFit":
        """Move the data term's tensors (not the network: its owner moves it) to ``device``."""
        for name in ("target", "matrix", "matrix_t", "xs", "ys", "zs"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` distinct x slices (detector columns) at random, (count,) long."""
        return torch.randperm(self.shape[0], generator=generator)[:count]

    def loss(self, columns: torch.Tensor) -> torch.Tensor:
        """Mean squared error (network units) of the slices ``columns`` (B,) in every view."""
        columns = columns.to(self.xs.device)
        density = self.field(_slice_points(self.xs[columns], self.ys, self.zs)).reshape(len(columns), -1)
        predicted = _Project.apply(self.matrix, self.matrix_t, density.T.contiguous())  # (N * H, B)
        return torch.mean((predicted - self.target[:, columns]) ** 2)

    @torch.no_grad()
    def volume(self) -> np.ndarray:
        """(W, H, depth) float32 density of the network on the voxel grid, data units per A,
        indexed [ix, iy, iz] as in :mod:`atomsplat.analysis.baselines`."""
        w, h, depth = self.shape
        volume = np.empty((w, h, depth), dtype=np.float32)
        for j in range(w):
            points = _slice_points(self.xs[j : j + 1], self.ys, self.zs)
            volume[j] = self.field(points).reshape(depth, h).T.cpu().numpy()
        return volume * np.float32(self.scale)


def fit_inr(
    projections,
    tilt_angles,
    pixel_size: float,
    *,
    steps: int = 500,
    slices_per_step: int = 8,
    learning_rate: float = 1e-2,
    depth: int | None = None,
    tilt_axis_angle: float = 0.0,
    shifts=None,
    seed: int = 0,
    progress: bool = True,
    **network,
) -> INRResult:
    """Fit a :class:`GridField` to a tilt series and sample it on the voxel grid (:class:`SliceFit`,
    Adam).

    Args:
        projections: (N, H, W) float projections.
        tilt_angles: (N,) degrees.
        pixel_size: p, A (also the voxel size).
        steps: optimisation steps.
        slices_per_step: x slices (detector columns) per step, each seen in every view.
        learning_rate: Adam's step size (grids and MLP alike).
        depth: voxels along z; default H.
        tilt_axis_angle: in-plane tilt-axis angle, degrees.
        shifts: (N, 2) known detector shifts in A, or None.
        seed: seeds the network's initial weights and the draw of slices.
        progress: print the loss ten times during training, to stderr.
        **network: keyword arguments of :class:`GridField` (``finest_cell`` defaults to p).

    Returns:
        :class:`INRResult` with the volume (W, H, depth) in data units per A, indexed
        [ix, iy, iz] as in :mod:`atomsplat.analysis.baselines`.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    fit = SliceFit(projections, tilt_angles, pixel_size, depth, tilt_axis_angle, shifts, seed, **network)
    w = fit.shape[0]
    if int(slices_per_step) != slices_per_step or not 1 <= slices_per_step <= w:
        raise ValueError(f"slices_per_step must be a whole number in 1..{w}, got {slices_per_step!r}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(fit.field.parameters(), lr=learning_rate, eps=1e-15)
    losses = []
    for step in range(int(steps)):
        loss = fit.loss(fit.draw(slices_per_step, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress and (step + 1) % max(1, steps // 10) == 0:
            print(f"INR step {step + 1}/{steps}  mse {np.mean(losses[-50:]):.3e}", file=sys.stderr, flush=True)
    return INRResult(field=fit.field, volume=fit.volume(), scale=fit.scale, losses=losses)
