"""Each atom's footprint in its pixel window, and what it is worth to the data: tensors in, tensors out.

The projector adds every atom's footprint ``A py_i px_j`` (``A = w / p^2``, exact 1D pixel
integrals px, py) into images without ever holding all footprints. Some questions are asked per
atom instead: how much would the data term grow without this atom (:func:`removal_gains`, model
selection), and how well do the data fix its parameters (:mod:`atomsplat.render.fisher`). Both
walk the atoms' windows in chunks with :func:`atom_windows`, in the same windows as the projector
(:func:`atomsplat.render.projector.window_radii`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import torch

from atomsplat.render.projector import DEFAULT_WINDOW, detector_centres, profile_derivatives, window_radii
from atomsplat.render.windows import PaddedGrid, window_start

_WINDOW_VALUES = 1 << 21  # (V, k, S, S) values of one chunk of atoms, times the derivatives asked for
_TOUCHED = 0.01  # a pixel is touched by a footprint above this fraction of the footprint's peak


@dataclass
class Component:
    """One concentric Gaussian of the atoms of a chunk: it holds ``fraction`` of each atom's weight
    and has ``scale`` x its width; px, dpx, dspx: (V, k, S) its 1D pixel integrals along x and their
    derivatives by the centre and by its own width (:func:`atomsplat.render.projector.profile_derivatives`);
    py, dpy, dspy along y."""

    fraction: float
    scale: float
    px: torch.Tensor
    dpx: torch.Tensor
    dspx: torch.Tensor
    py: torch.Tensor
    dpy: torch.Tensor
    dspy: torch.Tensor


@dataclass
class AtomWindows:
    """The windows of a chunk of k atoms in V views.

    Attributes:
        members: (k,) long indices of the atoms.
        components: the atom's concentric Gaussians (one, or a core and a halo), in the window.
        sigma: (k,) widths, A; amplitude: (k,) ``w / p^2``.
        grid: the windows' :class:`atomsplat.render.windows.PaddedGrid`; size: S.
    """

    members: torch.Tensor
    components: List[Component]
    sigma: torch.Tensor
    amplitude: torch.Tensor
    grid: PaddedGrid
    size: int

    def footprints(self) -> torch.Tensor:
        """(V, k, S, S) each atom's mean density in each window pixel (data units)."""
        return self.amplitude[None, :, None, None] * sum(c.fraction * _outer(c.py, c.px) for c in self.components)

    def derivatives(self, rotations: torch.Tensor) -> torch.Tensor:
        """(V, k, 5, S, S) the footprints' derivatives by x, y, z (A, sample frame; ``rotations`` the
        (V, 3, 3) view matrices), log w and log sigma; for one Gaussian

            dm/dcx = A py dpx,  dm/dcy = A dpy px,  dm/dr = (dm/dcx, dm/dcy) M[:2],
            dm/dlog w = A py px,  dm/dlog sigma = A sigma (dspy px + py dspx),

        summed over the components with their fractions (a halo's width is its scale x sigma).
        """
        amplitude = self.amplitude[None, :, None, None]
        sigma = self.sigma[None, :, None, None]
        d_cx = d_cy = d_sigma = 0.0
        for c in self.components:
            d_cx = d_cx + c.fraction * _outer(c.py, c.dpx)
            d_cy = d_cy + c.fraction * _outer(c.dpy, c.px)
            d_sigma = d_sigma + c.fraction * c.scale * (_outer(c.dspy, c.px) + _outer(c.py, c.dspx))
        detector = torch.stack([amplitude * d_cx, amplitude * d_cy], dim=2)
        position = torch.einsum("vcd,vkcij->vkdij", rotations[:, :2, :].to(detector), detector)
        width = amplitude * sigma * d_sigma
        return torch.cat([position, self.footprints()[:, :, None], width[:, :, None]], dim=2)

    def separable_derivatives(self):
        """The derivatives of :meth:`derivatives` in the detector frame, as sums of outer products of
        1D profiles: ``d_a = scale_a sum_rc mixing[a, r, c] rows_r (outer) cols_c`` for the parameters
        a = centre x, centre y (A), log w, log sigma.

        Returns:
            rows: (V, k, S, n) the y profiles (value, centre and width derivative of each component);
            cols: (V, k, S, n) the x profiles, likewise; mixing: (4, n, n) constants;
            scale: (k, 4) ``A, A, A, A sigma``.
        """
        n = 3 * len(self.components)
        mixing = torch.zeros(4, n, n, dtype=self.amplitude.dtype, device=self.amplitude.device)
        for index, c in enumerate(self.components):
            value, centre, width = 3 * index, 3 * index + 1, 3 * index + 2
            mixing[0, value, centre] = c.fraction  # py dpx
            mixing[1, centre, value] = c.fraction  # dpy px
            mixing[2, value, value] = c.fraction  # py px
            mixing[3, width, value] = mixing[3, value, width] = c.fraction * c.scale  # dspy px + py dspx
        rows = torch.stack([p for c in self.components for p in (c.py, c.dpy, c.dspy)], dim=-1)
        cols = torch.stack([p for c in self.components for p in (c.px, c.dpx, c.dspx)], dim=-1)
        scale = torch.stack([self.amplitude] * 3 + [self.amplitude * self.sigma], dim=1)
        return rows, cols, mixing, scale

    def gather(self, images) -> torch.Tensor:
        """(V, k, S, S) the values of ``images`` (V, H, W), or of :class:`PaddedImages`, in the windows;
        0 outside the detector."""
        if not isinstance(images, PaddedImages):
            images = PaddedImages(images)
        return self.grid.gather(images.flat(self.grid.radius), self.size)


class PaddedImages:
    """(V, H, W) images padded by a window radius, kept for the chunks that share the radius
    (:func:`atom_windows` yields its chunks radius by radius)."""

    def __init__(self, images: torch.Tensor):
        self.images, self.radius, self.padded = images, None, None

    def flat(self, radius: int) -> torch.Tensor:
        """The images padded by ``radius`` on every side, flattened."""
        if radius != self.radius:
            self.radius = radius
            self.padded = torch.nn.functional.pad(self.images, (radius,) * 4).contiguous().view(-1)
        return self.padded


def _outer(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return rows[..., :, None] * cols[..., None, :]


def atom_windows(
    positions: torch.Tensor,
    sigmas: torch.Tensor,
    weights: torch.Tensor,
    rotations: torch.Tensor,
    offsets: torch.Tensor,
    pixel_size: float,
    height: int,
    width: int,
    window: float = DEFAULT_WINDOW,
    planes: int = 1,
    halo: Optional[Tuple[float, float]] = None,
) -> Iterator[AtomWindows]:
    """Yields the :class:`AtomWindows` of all atoms, chunk by chunk, each chunk's (V, k, S, S) values
    times ``planes`` (the arrays its consumer will build) bounded to about 2M.

    Args:
        positions: (K, 3) A; sigmas: (K,) A; weights: (K,) data units x A^2.
        rotations: (V, 3, 3) view matrices; offsets: (V, 2) detector offsets, A.
        pixel_size: A; height, width: detector pixels; window: half-width in widths.
        halo: (fraction, ratio) of atoms made of a core and a halo
            (:class:`atomsplat.model.cloud.AtomShape`), or None for one Gaussian per atom. The window
            then covers the halo.
    """
    parts = [(1.0, 1.0)] if halo is None else [(1.0 - halo[0], 1.0), (halo[0], halo[1])]
    centres = detector_centres(positions, rotations, offsets)  # (V, K, 2)
    radii = window_radii(sigmas * parts[-1][1], pixel_size, window)
    views = len(rotations)
    for radius in torch.unique(radii).tolist():
        group = torch.nonzero(radii == radius).squeeze(1)
        size = 2 * radius + 1
        step = max(1, _WINDOW_VALUES // (views * planes * size * size))
        for first in range(0, len(group), step):
            members = group[first : first + step]
            cx, cy = centres[:, members, 0], centres[:, members, 1]
            start_x = window_start(cx, width, pixel_size, radius)
            start_y = window_start(cy, height, pixel_size, radius)
            sig = sigmas[members]
            components = [
                Component(
                    fraction,
                    scale,
                    *profile_derivatives(cx, scale * sig, start_x, width, pixel_size, size),
                    *profile_derivatives(cy, scale * sig, start_y, height, pixel_size, size),
                )
                for fraction, scale in parts
            ]
            grid = PaddedGrid(start_y, start_x, size, height, width, radius)
            yield AtomWindows(members, components, sig, weights[members] / pixel_size**2, grid, size)


def removal_gains(
    positions: torch.Tensor,
    sigmas: torch.Tensor,
    weights: torch.Tensor,
    rotations: torch.Tensor,
    offsets: torch.Tensor,
    pixel_size: float,
    model: torch.Tensor,
    measured: torch.Tensor,
    pixel_cost: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    window: float = DEFAULT_WINDOW,
    halo: Optional[Tuple[float, float]] = None,
    view_gains: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """What each atom is worth to the data: how much the data term grows when it alone is removed.

    Args:
        positions, sigmas, weights, rotations, offsets, pixel_size, window, halo: the atoms and
            views, as for :func:`atom_windows`.
        model: (V, H, W) the whole model of the views (all atoms, background included).
        measured: (V, H, W) the measured projections.
        pixel_cost: the data term of every pixel, ``pixel_cost(model, measured)`` (same shape), e.g.
            the negative log-likelihood of counts.
        view_gains: (V,) each view's factor on the atoms' footprints (:attr:`atomsplat.model.cloud.Views.gains`),
            or None for 1.

    Returns:
        gains (K,): sum over the atom's windows of ``pixel_cost(model - footprint) - pixel_cost(model)``
        (the other atoms held fixed); touched (K,): the number of pixels it touches (its footprint
        above 1 % of its peak in that view), over all views.
    """
    views, height, width = model.shape
    gains = positions.new_zeros(len(positions))
    touched = positions.new_zeros(len(positions))
    detector, model_pixels, data_pixels = (PaddedImages(x) for x in (torch.ones_like(model), model, measured))
    for part in atom_windows(
        positions, sigmas, weights, rotations, offsets, pixel_size, height, width, window, 4, halo
    ):
        inside = part.gather(detector) > 0  # (V, k, S, S)
        footprint = part.footprints()
        if view_gains is not None:
            footprint = footprint * view_gains.to(footprint)[:, None, None, None]
        whole = part.gather(model_pixels)
        data = part.gather(data_pixels)
        change = (pixel_cost(whole - footprint, data) - pixel_cost(whole, data)) * inside
        gains[part.members] = change.sum(dim=(0, 2, 3)).to(gains)
        peak = footprint.amax(dim=(2, 3), keepdim=True)
        touched[part.members] = ((footprint > _TOUCHED * peak) & inside).sum(dim=(0, 2, 3)).to(touched)
    return gains, touched


def covariance_gradients(
    positions: torch.Tensor,
    sigmas: torch.Tensor,
    weights: torch.Tensor,
    rotations: torch.Tensor,
    offsets: torch.Tensor,
    pixel_size: float,
    gradient: torch.Tensor,
    window: float = DEFAULT_WINDOW,
    halo: Optional[Tuple[float, float]] = None,
) -> torch.Tensor:
    """How the data term changes with each isotropic atom's 3D covariance: (K, 3, 3) ``dL / d Sigma``
    at ``Sigma = sigma^2 I``, so that stretching atom k by ``Sigma -> Sigma + eps u u^T`` changes the
    data term by ``eps u^T G_k u`` to first order (A^-2 x data-term units).

    In a view the atom's footprint is a 2D Gaussian of covariance ``P Sigma P^T`` (P the view matrix's
    first two rows), a halo's scaled by ``ratio^2``, so ``G_k = sum_v P^T g_v P`` with ``g_v`` the 2D
    gradient. Exactly for the pixel integrals: ``d m / d Sigma_xx = A py dspx / (2 s)``, ``d m / d
    Sigma_yy = A dspy px / (2 s)`` and, for the off-diagonal pair, ``d m / d Sigma_xy = A dpy dpx``
    (a Gaussian's derivative by its centre is its density times ``(x - c) / s^2``), each component at
    its own width s with its fraction.

    Args:
        positions, sigmas, weights, rotations, offsets, pixel_size, window, halo: the atoms and
            views, as for :func:`atom_windows`.
        gradient: (V, H, W) the data term's derivative by the model in every pixel.
    """
    views, height, width = gradient.shape
    result = positions.new_zeros(len(positions), 3, 3)
    pixels = PaddedImages(gradient)
    project = rotations[:, :2, :].to(positions)
    for part in atom_windows(
        positions, sigmas, weights, rotations, offsets, pixel_size, height, width, window, 4, halo
    ):
        g = part.gather(pixels)  # (V, k, S, S)
        xx = yy = xy = 0.0
        for c in part.components:
            factor = c.fraction * c.scale**2
            s = (c.scale * part.sigma)[None, :, None, None]
            xx = xx + factor * _outer(c.py, c.dspx) / (2 * s)
            yy = yy + factor * _outer(c.dspy, c.px) / (2 * s)
            xy = xy + factor * _outer(c.dpy, c.dpx) / 2  # each of the two symmetric entries
        amplitude = part.amplitude[None, :]
        entries = [(amplitude * (g * term).sum(dim=(2, 3))) for term in (xx, xy, yy)]  # (V, k) each
        detector = torch.stack([torch.stack(entries[:2], -1), torch.stack(entries[1:], -1)], -2)  # (V, k, 2, 2)
        result[part.members] = torch.einsum("vai,vkab,vbj->kij", project, detector, project).to(result)
    return result
