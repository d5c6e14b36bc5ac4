"""Density control of the Gaussians: merge, prune, duplicate (pure; tensors in, tensors out).

Every operation returns the new per-Gaussian parameters and ``source`` (K_new,) long: the old
index whose optimizer state a new Gaussian inherits, or -1 for a Gaussian that starts afresh.
Parameters travel as a dict of (K, ...) tensors that always holds "positions" (K, 3) in A and
"log_weights" (K,); every other entry is a width parameter (log sigma or log scales, A), and is
averaged like one. No step loops over Gaussians in Python.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from scipy.ndimage import maximum_filter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

Params = Dict[str, torch.Tensor]


# Queries per k-nearest-neighbour call: (chunk, k) distances and indices stay at a few tens of MB.
_QUERY_CHUNK = 1 << 16


def close_pairs(positions: np.ndarray, distance: float, neighbours: int, neighbours_above: int) -> np.ndarray:
    """Pairs (P, 2) of indices of Gaussians closer than ``distance`` (A).

    Up to ``neighbours_above`` Gaussians every pair is found; above it, as in the paper, only each
    Gaussian's ``neighbours`` nearest neighbours are searched, so that memory stays linear in K
    however crowded the Gaussians are. The queries run in the KD-tree's own order (neighbouring
    queries walk the same nodes: 4x faster than random order at 1M Gaussians), in chunks, on all
    cores.
    """
    count = len(positions)
    if count < 2:
        return np.zeros((0, 2), dtype=np.intp)
    tree = cKDTree(positions, balanced_tree=False, compact_nodes=False)  # same answers, faster to build
    if count <= neighbours_above:
        return tree.query_pairs(distance, output_type="ndarray")
    ranks = np.arange(1, min(neighbours + 1, count) + 1)  # the k nearest, themselves included
    parts = []
    for first in range(0, count, _QUERY_CHUNK):
        rows = tree.indices[first : first + _QUERY_CHUNK]
        dist, idx = tree.query(positions[rows], k=ranks, distance_upper_bound=distance, workers=-1)
        near = np.isfinite(dist) & (idx != rows[:, None])  # not "column 0": coincident points tie
        parts.append(np.stack([np.broadcast_to(rows[:, None], idx.shape)[near], idx[near]], axis=1))
    return np.concatenate(parts)


def cluster_labels(
    positions: np.ndarray, distance: float, neighbours: int = 20, neighbours_above: int = 10000
) -> np.ndarray:
    """Label (K,) of each Gaussian's cluster: connected components of the "closer than distance" graph."""
    count = len(positions)
    pairs = close_pairs(positions, distance, neighbours, neighbours_above)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def merge(params: Params, labels: torch.Tensor, mode: str = "weighted") -> Tuple[Params, torch.Tensor]:
    """Replace every cluster by one Gaussian.

    mode "weighted" (default): the cluster's total weight, at its weight-averaged centre, with
    weight-averaged width parameters: the projected mass is conserved.
    mode "mean" (the paper's): plain means of weight, centre and width parameters.

    Args:
        params: per-Gaussian tensors (see module docstring); labels: (K,) long cluster labels 0..C-1.

    Returns:
        merged params (C, ...), source (C,): the single member of a singleton cluster, else -1.
    """
    count = int(labels.max()) + 1 if len(labels) else 0
    weights = params["log_weights"].exp()
    sizes = torch.zeros(count, dtype=weights.dtype, device=weights.device).index_add_(
        0, labels, torch.ones_like(weights)
    )
    if mode == "weighted":
        share = weights
    elif mode == "mean":
        share = torch.ones_like(weights)
    else:
        raise ValueError(f"merge mode must be 'weighted' or 'mean', got {mode!r}")
    total = torch.zeros_like(sizes).index_add_(0, labels, share)
    frac = share / total[labels]

    def average(values):
        shape = (count,) + values.shape[1:]
        return values.new_zeros(shape).index_add_(0, labels, values * frac.view(-1, *([1] * (values.dim() - 1))))

    merged = {name: average(values) for name, values in params.items() if name != "log_weights"}
    summed = torch.zeros_like(sizes).index_add_(0, labels, weights)
    merged["log_weights"] = (summed if mode == "weighted" else summed / sizes).log()
    member = torch.full((count,), -1, dtype=torch.long, device=labels.device)
    member[labels] = torch.arange(len(labels), device=labels.device)
    source = torch.where(sizes == 1, member, torch.full_like(member, -1))
    return merged, source


def prune(params: Params, fraction: float) -> Tuple[Params, torch.Tensor]:
    """Drop Gaussians whose weight is below ``fraction`` x the median weight."""
    weights = params["log_weights"].exp()
    keep = torch.nonzero(weights >= fraction * weights.median()).squeeze(1)
    return {name: values[keep] for name, values in params.items()}, keep


def duplicate(
    params: Params,
    chosen: torch.Tensor,
    offset: torch.Tensor,
    generator: torch.Generator = None,
    directions: Optional[torch.Tensor] = None,
) -> Tuple[Params, torch.Tensor]:
    """Replace each Gaussian in ``chosen`` (long indices) by two copies of half its weight.

    The copies move by ``offset`` (A, scalar or per chosen Gaussian) in opposite directions,
    ``directions`` (M, 3) or random ones, so that they receive different gradients; the total weight
    is conserved. Appended copies start with fresh optimizer state, the first copy keeps the old one.
    """
    count = len(params["positions"])
    positions = params["positions"]
    if directions is None:
        direction = torch.randn(len(chosen), 3, generator=generator, dtype=positions.dtype).to(positions.device)
    else:
        direction = directions.to(positions)
    step = torch.nn.functional.normalize(direction, dim=1) * torch.as_tensor(offset, dtype=positions.dtype).reshape(
        -1, 1
    )
    new = {name: torch.cat([values, values[chosen]]) for name, values in params.items()}
    new["positions"] = torch.cat([positions.index_add(0, chosen, step), positions[chosen] - step])
    halved = new["log_weights"].clone()
    halved[chosen] -= np.log(2.0)
    halved[count:] -= np.log(2.0)
    new["log_weights"] = halved
    source = torch.cat([torch.arange(count, device=positions.device), torch.full_like(chosen, -1)])
    return new, source


def grid_points(low: np.ndarray, high: np.ndarray, spacing: float) -> Tuple[np.ndarray, np.ndarray]:
    """A cubic grid over the box [low, high] (3,) A: its shape (3,) and float32 points
    (prod(shape), 3), ``low + spacing * index`` in C order of the shape (:func:`grid_positions`)."""
    shape = np.floor((np.asarray(high) - np.asarray(low)) / spacing).astype(int) + 1
    axes = [np.float32(low[d]) + np.float32(spacing) * np.arange(shape[d], dtype=np.float32) for d in range(3)]
    return shape, np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def grid_positions(indices: np.ndarray, shape, origin: np.ndarray, spacing: float) -> np.ndarray:
    """(M, 3) float32 positions, A, of the grid points of flat C-order ``indices`` (M,) of a grid of
    ``shape`` (3,) whose point (0, 0, 0) lies at ``origin`` (3,) A, ``spacing`` A apart (the points
    of :func:`grid_points` with ``origin = low``)."""
    index = np.stack(np.unravel_index(np.asarray(indices, dtype=np.int64), tuple(shape)), axis=-1)
    return np.asarray(origin, dtype=np.float32) + np.float32(spacing) * index.astype(np.float32)


def residual_peaks(
    score: np.ndarray, threshold: float, min_distance: float, spacing: float, existing: np.ndarray, origin: np.ndarray
) -> np.ndarray:
    """Flat C-order indices of the grid points where atoms are missing: local maxima of a search's
    ``score`` (nx, ny, nz) above ``threshold`` that lie at least ``min_distance`` A from every
    ``existing`` Gaussian (K, 3).

    The grid's point (0, 0, 0) lies at ``origin`` (3,) A, its points ``spacing`` A apart
    (:func:`grid_positions`). A maximum is a point that no other grid point within
    ``min_distance`` along every axis exceeds (a separable cubic maximum filter), so two maxima
    are about ``min_distance`` apart or more. A maximum near an existing Gaussian is that
    Gaussian's own misfit, which the optimizer corrects; only the others are new atoms.
    """
    size = 2 * max(1, int(min_distance / spacing)) + 1
    peak = (score == maximum_filter(score, size=size, mode="constant", cval=-np.inf)) & (score > threshold)
    index = np.flatnonzero(peak.reshape(-1))
    if len(index) and len(existing):
        points = grid_positions(index, score.shape, origin, spacing)
        distance, _ = cKDTree(existing).query(points, distance_upper_bound=min_distance)
        index = index[~np.isfinite(distance)]
    return index


def strongest(indices: np.ndarray, score: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` of the flat ``indices`` (M,) into ``score`` where it is highest (all when M <=
    ``count``), in their given order."""
    if len(indices) <= count:
        return indices
    keep = np.argsort(-score.reshape(-1)[indices], kind="stable")[:count]
    return indices[np.sort(keep)]


def matched_filter(
    residual: torch.Tensor,
    variance: torch.Tensor,
    sigma: float,
    pixel_size: float,
    halo: Optional[Tuple[float, float]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score and information of one more atom centred on each pixel: (S, I), each (V, H, W).

    An atom of weight w, width ``sigma`` (A) and ``halo`` (fraction f, ratio r, as
    :func:`peak_density`; None: one Gaussian) adds w g to the projections, g its footprint of unit
    weight in data units (the pixel integrals of ``(1 - f) N(sigma) + f N(r sigma)`` over the pixel
    area, ``pixel_size`` A pixels, as the projector makes it). That changes the log-likelihood by
    about ``w S - w^2 I / 2`` with ``S = sum g r / var`` and ``I = sum g^2 / var`` over the pixels
    (``residual`` r = measured - model, ``variance`` var of every pixel, data units): the score and
    the Fisher information of w at w = 0 (exact for Gaussian noise, and for Poisson counts with var
    = model / gain). Summed over views, ``S / sqrt(I)`` is the score test's standard score of an
    atom there and ``S / I`` its weight. The approximation: a point between pixel centres is read at
    its pixel's centre, up to half a pixel off.
    """
    fraction, ratio = (0.0, 1.0) if halo is None else halo
    parts = [(1.0 - fraction, sigma)] + ([(fraction, ratio * sigma)] if fraction > 0 else [])
    half = max(1, math.ceil(4.0 * max(width for _, width in parts) / pixel_size))
    edges = (torch.arange(-half, half + 2, dtype=residual.dtype, device=residual.device) - 0.5) * pixel_size
    # (2 half + 1,) pixel integrals of each part's 1D profile, per unit length: their outer products are densities
    profiles = [torch.diff(0.5 * torch.erf(edges / (math.sqrt(2.0) * width))) / pixel_size for _, width in parts]

    def separable(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.conv2d(images[:, None], kernel.view(1, 1, 1, -1), padding=(0, half))
        return torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1), padding=(half, 0))[:, 0]

    whitened, inverse = residual / variance, 1.0 / variance
    score = sum(share * separable(whitened, profile) for (share, _), profile in zip(parts, profiles))
    information = sum(  # g^2 = sum over pairs of parts, each pair's product separable
        parts[i][0] * parts[j][0] * (1 if i == j else 2) * separable(inverse, profiles[i] * profiles[j])
        for i in range(len(parts))
        for j in range(i, len(parts))
    )
    return score, information


def append(params: Params, positions: torch.Tensor, log_weights: torch.Tensor) -> Tuple[Params, torch.Tensor]:
    """Add Gaussians at ``positions`` (P, 3) A with ``log_weights`` (P,); their other parameters
    (width, orientation) are those of the existing Gaussian of median width. The new Gaussians
    come last, with fresh optimizer state (source -1)."""
    count = len(params["positions"])
    template = torch.argsort(width_of(params))[count // 2]
    new = {}
    for name, values in params.items():
        if name == "positions":
            added = positions.to(values)
        elif name == "log_weights":
            added = log_weights.to(values)
        else:
            added = values[template].expand(len(positions), *values.shape[1:])
        new[name] = torch.cat([values, added])
    source = torch.cat(
        [torch.arange(count, device=positions.device), torch.full((len(positions),), -1, device=positions.device)]
    )
    return new, source


def width_of(params: Params) -> torch.Tensor:
    """(K,) a width in A per Gaussian: sigma, or the geometric mean of the three scales."""
    if "log_sigmas" in params:
        return params["log_sigmas"].exp()
    return params["log_scales"].mean(dim=1).exp()


def diffuse(params: Params, width: float) -> torch.Tensor:
    """(K,) bool: the Gaussians wider than ``width`` x the median width. They stand for what one
    Gaussian per atom does not capture (the long tails of atoms' projected potential, diffuse
    signal), not for atoms: :class:`atomsplat.model.strategy.DensityStrategy` neither merges nor
    splits them, and the model does not report them as atoms."""
    widths = width_of(params)
    if len(widths) == 0:
        return torch.zeros(0, dtype=torch.bool, device=widths.device)
    return widths > width * widths.median()


def peak_density(sigmas: torch.Tensor, halo: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """The projected density at the centre of an atom of unit weight and width ``sigmas`` (A^-2):
    ``1 / (2 pi sigma^2)``, or with a halo (fraction f, ratio r; :class:`atomsplat.model.cloud.AtomShape`)
    ``(1 - f) / (2 pi sigma^2) + f / (2 pi (r sigma)^2)``."""
    fraction, ratio = (0.0, 1.0) if halo is None else halo
    return ((1.0 - fraction) + fraction / ratio**2) / (2.0 * math.pi * sigmas**2)
