"""Where the Gaussians start: random positions in the particle's support, from the projections.

The supports (``init_support``):

- ``"reconstruction"``: a quick SIRT reconstruction of the projections less their fitted
  background, on voxels of about ``init_voxel`` A (the projections binned to that size), smoothed
  over ``init_smoothing`` A. Its smoothed density sets both where the particle is (voxels above
  ``support_threshold`` of the density's robust peak) and where in it the Gaussians start (drawn
  with probability proportional to the density there). This works at any dose, for any tilt range
  (a half turn starting at 0 too), and for a particle that is not seen whole in every view: no
  pixel needs to be bright in every projection.
- ``"peaks"`` (default): one Gaussian at every local maximum of the reconstruction smoothed over
  ``init_peak_smoothing`` A inside that support, maxima at least ``merge_distance`` apart (the
  strongest first): the atoms where the data already show them, noise maxima included, which
  model selection then removes.
- ``"hull"``: the visual hull: points whose pixel exceeds ``hull_threshold`` x the series maximum
  in at least 95 % of the views, uniformly (the paper-era initialisation; it needs the particle
  to stand out from the noise in almost every projection, which counts at low dose do not).
- ``"sphere"``: uniform in the sphere seen by every projection.
- ``"atoms"``: at the atoms of the extended XYZ file ``init_atoms`` (A, sample frame), with its
  per-atom "weight" and "sigma" where it has them (:func:`start_from_atoms`): a warm start from an
  earlier reconstruction, e.g. the previous tilt series of a time series.

The count is ``init_density`` x the volume of the support unless ``init_count`` is set (not for
``"atoms"``: one Gaussian per atom).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from atomsplat.analysis.baselines import sirt
from atomsplat.analysis.tracing import trace_atoms
from atomsplat.geometry import pixel_centers, pixel_index, view_rotations
from atomsplat.model.strategy import minimum_distance
from atomsplat.render.projector import detector_centres


class EmptySeriesError(ValueError):
    """The projections hold nothing above their background: there is no particle to fit."""


def check_signal(signal: torch.Tensor, where: str = "tilt series", significance: float = 5.0) -> float:
    """The signal-to-noise ratio of the particle's total signal, or :class:`EmptySeriesError`.

    A particle projects the same total weight into every projection (mass conservation), so the
    sums of the background-subtracted projections ``signal`` (N, H, W) have a positive mean and a
    small spread; an empty series has sums that scatter about 0. The statistic is the mean sum over
    its standard error (a t-statistic); below ``significance`` the series holds no particle.
    """
    sums = signal.double().sum(dim=(1, 2))
    spread = float(sums.std()) if len(sums) > 1 else float("inf")
    ratio = float(sums.mean()) / max(spread / len(sums) ** 0.5, 1e-30)
    if not ratio > significance:
        raise EmptySeriesError(
            f"{where}: the projections hold no signal above their background (total signal {ratio:.1f} standard "
            f"errors from 0; a particle gives hundreds): is the series empty, or its background wrong?"
        )
    return ratio


def initial_positions(series, signal: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    """(K, 3) random initial positions, A, sample frame (module docstring).

    Args:
        series: the TiltSeries (geometry: angles, tilt axis, shifts, pixel size).
        signal: (N, H, W) projections of the atoms: the series less any fitted background.
        config: the model configuration (``init_*``, ``support_threshold``, ``hull_threshold``).
        generator: the random generator.

    Raises:
        EmptySeriesError: the projections hold nothing above their background (:func:`check_signal`).
    """
    check_signal(signal, str(series.source or "tilt series"))
    if config.init_support in ("reconstruction", "peaks"):
        return _from_reconstruction(series, signal, config, generator)
    if config.init_support == "atoms":
        return torch.from_numpy(read_initial_atoms(config.init_atoms)["positions"]).float()
    _, height, width = series.shape
    radius = 0.5 * min(height, width) * series.pixel_size
    volume = 4.0 / 3.0 * math.pi * radius**3

    def sphere(count):
        direction = torch.nn.functional.normalize(
            torch.randn(count, 3, generator=generator, dtype=torch.float64), dim=1
        )
        return direction * radius * torch.rand(count, 1, generator=generator, dtype=torch.float64) ** (1.0 / 3.0)

    if config.init_support == "sphere":
        return sphere(config.init_count or max(1, int(config.init_density * volume))).float()
    rotations = torch.from_numpy(view_rotations(series.tilt_angles, series.tilt_axis_angle))
    shifts = torch.from_numpy(series.shifts_or_zeros())
    level = config.hull_threshold * float(signal.max())

    def in_hull(points):
        centres = detector_centres(points, rotations, shifts)  # (V, K, 2)
        cols = pixel_index(centres[..., 0], width, series.pixel_size).clamp(0, width - 1)
        rows = pixel_index(centres[..., 1], height, series.pixel_size).clamp(0, height - 1)
        values = signal[torch.arange(len(signal))[:, None], rows, cols]
        return points[(values > level).float().mean(0) >= 0.95]

    batch = max(20000, int(config.init_density * volume))
    hull = in_hull(sphere(batch))
    if len(hull) == 0:
        raise EmptySeriesError(
            "initialisation: no point of the volume is bright in every projection (is the data empty? "
            "--pipeline.model.init-support reconstruction needs no such point)"
        )
    count = config.init_count or max(1, int(config.init_density * volume * len(hull) / batch))
    while len(hull) < count:
        hull = torch.cat([hull, in_hull(sphere(batch))])
    return hull[:count].float()


def reconstruction(series, signal: np.ndarray, voxel: float, iterations: int = 20, subsets: int = 1):
    """A quick SIRT reconstruction of ``signal`` (N, H, W), the projections binned by whole pixels to
    about ``voxel`` A (:func:`atomsplat.analysis.baselines.sirt`, non-negative, ``iterations`` passes;
    OS-SART over ``subsets`` ordered subsets of the views, at most one per view, where that is above 1).

    Twenty passes of SIRT leave a thick particle unconverged: its deeper atoms merge into fewer
    maxima. The peaks start (``benchmarks/init_peaks.py``, amorphous Si at 8e3 e/A^2, Gaussians /
    TPR / FPR against the truth) on 5.5 nm (4,606 atoms) is 3,151 / 0.532 / 0.222 from 20 passes of
    SIRT, 4,192 / 0.718 / 0.211 from 100 and 4,345 / 0.720 / 0.237 from 10 passes over 10 subsets
    (in half the time of 20 SIRT passes); on 9 nm (19,133 atoms) 10,975 / 0.400 / 0.302 from 20 SIRT
    passes, 15,126 / 0.568 / 0.282 from 10 over 10. Yet 3,000 steps of default training from the
    better start end where they end from the default one (5.5 nm: TPR 0.476 / FPR 0.140 against
    0.477 / 0.160), and on the 2 nm particle at 8e3 (202 atoms) its extra noise maxima (a start of
    430 / 0.797 / 0.626 against 283 / 0.703 / 0.498) cost atoms: after 500 steps and the final
    refinement 0.975 / 0.005 against 1.000 / 0 (one run each, 2026-12-06). So the default stays 20
    passes of SIRT (docs/lowdose.md, "A better start, not kept").

    Returns:
        volume (nx, ny, nz) in data units per A^3 (``volume[ix, iy, iz]`` as in
        :mod:`atomsplat.analysis.baselines`), and its voxel size in A.
    """
    factor = max(1, int(round(voxel / series.pixel_size)))
    n, height, width = signal.shape
    h, w = height // factor, width // factor
    binned = signal[:, : h * factor, : w * factor].reshape(n, h, factor, w, factor).mean(axis=(2, 4))
    size = series.pixel_size * factor
    # the binned grid drops the last pixels of a side that is not a multiple of the factor, which
    # moves its centre by half of what it drops: a known shift of every projection
    shifts = series.shifts_or_zeros() - np.array([w * factor - width, h * factor - height]) * series.pixel_size / 2.0
    volume = sirt(
        binned,
        series.tilt_angles,
        size,
        iterations=iterations,
        subsets=min(subsets, n),
        tilt_axis_angle=series.tilt_axis_angle,
        shifts=shifts if np.any(shifts) else None,
    )
    return volume / size, size


def particle_support(volume: np.ndarray, size: float, config) -> np.ndarray:
    """The support (bool, like ``volume``): where the reconstruction smoothed over ``init_smoothing``
    A exceeds ``support_threshold`` of its robust peak (the 99.99th percentile)."""
    smooth = gaussian_filter(volume, config.init_smoothing / size, mode="constant")
    peak = float(np.quantile(smooth, 0.9999))
    if not peak > 0:
        raise EmptySeriesError(
            "initialisation: the projections hold nothing above their background (is the data empty?)"
        )
    return smooth > config.support_threshold * peak


def _voxel_centres(index: np.ndarray, shape, size: float) -> np.ndarray:
    """(M, 3) positions, A, of voxels ``index`` (M, 3) of a volume of ``shape`` (voxel ``size`` A)."""
    return np.stack([pixel_centers(shape[axis], size)[index[:, axis]] for axis in range(3)], axis=1)


def _from_reconstruction(series, signal: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    volume, size = reconstruction(series, signal.cpu().numpy(), config.init_voxel)
    support = particle_support(volume, size, config)
    numpy_rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
    if config.init_support == "peaks":
        sharp = gaussian_filter(volume, config.init_peak_smoothing / size, mode="constant") * support
        traced = trace_atoms(sharp, size, min_distance=minimum_distance(series, config), threshold=0.0)
        return torch.from_numpy(traced.positions).float()
    smooth = gaussian_filter(volume, config.init_smoothing / size, mode="constant")
    weight = np.where(support, np.clip(smooth, 0.0, None), 0.0).reshape(-1)
    count = config.init_count or max(1, int(config.init_density * int(support.sum()) * size**3))
    cells = numpy_rng.choice(weight.size, size=count, p=weight / weight.sum())
    positions = _voxel_centres(np.stack(np.unravel_index(cells, volume.shape), axis=1), volume.shape, size)
    positions += (numpy_rng.random(positions.shape) - 0.5) * size  # anywhere in the voxel
    return torch.from_numpy(positions).float()


def read_initial_atoms(path) -> Dict[str, np.ndarray]:
    """The atoms of an extended XYZ file to start from: "positions" (K, 3) A, and "weight" (K,)
    and "sigma" (K,) A where the file has them, and "halo" (2,): (fraction, ratio) of atoms fitted
    as a core and a halo (its info "halo_fraction" and "halo_ratio"), as ``atomsplat-export`` writes them.

    Raises:
        ValueError: no file given, an unreadable or empty file, or non-finite or non-positive
            values; the message names the file.
    """
    import ase.io

    if path is None:
        raise ValueError("init_support 'atoms' needs init_atoms: the extended XYZ file of the atoms to start from")
    path = Path(path)
    try:
        atoms = ase.io.read(path, format="extxyz")
    except FileNotFoundError:
        raise ValueError(f"init_atoms {path}: no such file") from None
    except Exception as err:  # ASE raises many kinds for a malformed file
        raise ValueError(f"init_atoms {path}: not an extended XYZ file of atoms: {err}") from None
    found = {"positions": np.asarray(atoms.positions, dtype=np.float64)}
    for name in ("weight", "sigma"):
        if name in atoms.arrays:
            found[name] = np.asarray(atoms.arrays[name], dtype=np.float64).reshape(-1)
    if len(atoms) == 0:
        raise ValueError(f"init_atoms {path}: holds no atoms")
    if not all(np.all(np.isfinite(v)) for v in found.values()):
        raise ValueError(f"init_atoms {path}: non-finite positions, weights or widths")
    if any(np.any(found[name] <= 0) for name in ("weight", "sigma") if name in found):
        raise ValueError(f"init_atoms {path}: weights and widths must be positive")
    if "halo_fraction" in atoms.info and "halo_ratio" in atoms.info:
        fraction, ratio = float(atoms.info["halo_fraction"]), float(atoms.info["halo_ratio"])
        if not (0.0 < fraction < 1.0 and ratio > 1.0):
            raise ValueError(f"init_atoms {path}: halo_fraction must lie in (0, 1) and halo_ratio exceed 1")
        found["halo"] = np.array([fraction, ratio])
    return found


def start_from_atoms(cloud, path) -> None:
    """Give the Gaussians of ``cloud`` (made at the atoms of ``path``, :func:`initial_positions`)
    the file's weights and widths where it has them; the widths are kept within the cloud's
    [min_sigma, max_sigma]. A cloud of cores and halos (``cloud.shape``) takes the file's halo
    where it states one (atoms exported from such a run)."""
    found = read_initial_atoms(path)
    with torch.no_grad():
        if cloud.shape is not None and "halo" in found:
            fraction, ratio = found["halo"]
            cloud.shape.params["halo_logit"].fill_(math.log(fraction / (1.0 - fraction)))
            cloud.shape.params["halo_log_excess"].fill_(math.log(ratio - 1.0))
        if "weight" in found:
            cloud.params["log_weights"].copy_(torch.from_numpy(np.log(found["weight"])))
        if "sigma" in found:
            sigma = np.clip(found["sigma"], cloud.min_sigma, cloud.max_sigma)
            width = cloud.params["log_sigmas"] if cloud.isotropic else cloud.params["log_scales"]
            width.copy_(torch.from_numpy(np.log(sigma)).reshape(-1, *([1] * (width.dim() - 1))).expand_as(width))
