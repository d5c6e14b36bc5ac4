"""The methods a comparison runs: one runner signature and a registry by name.

A runner is any callable ``runner(case, options) -> MethodResult``: it gets one tilt series
(:class:`Case`) and its options from the preset, and returns the atoms it finds and its volume on
the common grid (:func:`grid_shape`). Runners are picklable (module-level functions or frozen
dataclasses of them), so a case can run in another process. Adding a method is one entry in
:data:`METHODS` (:func:`register`); the comparison scores every method's result the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from atomsplat.benchmark import BenchmarkError
from atomsplat.data.series import TiltSeries


@dataclass(frozen=True)
class Case:
    """One tilt series for the methods.

    Attributes:
        data: the dataset directory (:mod:`atomsplat.data.tiff_dataset` layout).
        series: the tilt series read from it.
        work: a directory the runner may write into (nerfstudio trainings go into subdirectories).
    """

    data: Path
    series: TiltSeries
    work: Path


@dataclass
class MethodResult:
    """A method's answer on one case.

    Attributes:
        positions: (K, 3) atoms found, A, sample frame.
        species: (K,) their chemical symbols, or None when the method does not tell species (or
            the dataset names no elements).
        volume: (nx, ny, nz) the method's volume on the grid of :func:`grid_shape`, voxel the
            pixel size, centred on the origin; any unit.
        seconds: the method's wall time.
        weights: (K,) the atoms' integrated weights (data units x A^2) where the method learns
            them (atomsplat), else None.
        crb: the Cramer-Rao bound of the atom positions at the true atoms, A
            (:mod:`atomsplat.benchmark.bound`), where the method computes it (atomsplat on counts
            with a known truth), else None.
    """

    positions: np.ndarray
    species: Optional[np.ndarray]
    volume: np.ndarray
    seconds: float
    weights: Optional[np.ndarray] = None
    crb: Optional[float] = None


Runner = Callable[[Case, dict], MethodResult]

METHODS: Dict[str, Runner] = {}


def register(name: str, runner: Runner) -> Runner:
    """Add ``runner`` to :data:`METHODS` as ``name`` (a name taken already is an error)."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered already")
    METHODS[name] = runner
    return runner


def runner(name: str) -> Runner:
    """The runner of method ``name``; :class:`BenchmarkError` naming the methods if unknown."""
    try:
        return METHODS[name]
    except KeyError:
        raise BenchmarkError(f"unknown method {name!r}; methods: {', '.join(sorted(METHODS))}") from None


def grid_shape(series: TiltSeries) -> tuple:
    """(nx, ny, nz) = (W, H, H): the baselines' reconstruction grid, which every volume shares."""
    _, height, width = series.shape
    return (width, height, height)


# ----------------------------------------------------------------------------- atomsplat
@dataclass(frozen=True)
class AtomsplatTraining:
    """Train the nerfstudio method ``method`` (atomsplat or one of its ablations); its atoms are
    the Gaussians (species from their weights), its volume their exact voxelization. On counts of a
    dataset with its true atoms, and isotropic Gaussians, also the Cramer-Rao bound at the true
    atoms (:func:`atomsplat.benchmark.bound.model_truth_bound`; not part of its time).

    Options: "steps" (default 3000) and fields of the model config.
    """

    method: str

    def __call__(self, case: Case, options: dict) -> MethodResult:
        import ase.io
        import torch

        from atomsplat.benchmark.bound import model_truth_bound
        from atomsplat.data.series import GROUND_TRUTH
        from atomsplat.export import atoms_from_model, load_model
        from atomsplat.render.voxelize import voxelize
        from atomsplat.sim.potential import volume_origin
        from atomsplat.training import train

        options = dict(options)
        steps = int(options.pop("steps", 3000))
        start = time.perf_counter()
        config = train(case.data, steps, case.work, method=self.method, **options)
        seconds = time.perf_counter() - start
        model, step = load_model(config)
        atoms = atoms_from_model(model)
        series = case.series
        crb = None
        if series.counts and model.cloud.isotropic and (case.data / GROUND_TRUTH).is_file():
            crb = model_truth_bound(model, step, ase.io.read(case.data / GROUND_TRUTH).positions)
        shape = grid_shape(series)
        volume = voxelize(
            torch.from_numpy(atoms.positions).float(),
            torch.from_numpy(atoms.arrays["sigma"]).float(),
            torch.from_numpy(atoms.arrays["weight"]).float(),
            volume_origin(shape, series.pixel_size),
            shape,
            series.pixel_size,
        ).numpy()
        species = np.array(atoms.get_chemical_symbols()) if series.elements else None
        return MethodResult(atoms.positions, species, volume, seconds, weights=atoms.arrays["weight"], crb=crb)


# ----------------------------------------------------------------------------- reconstruct, then trace
@dataclass(frozen=True)
class TracedReconstruction:
    """A volume reconstruction followed by atom tracing (:func:`atomsplat.analysis.tracing.trace_atoms`);
    species from the traced peak intensities.

    ``reconstruct(series, **options) -> (nx, ny, nz)`` volume on the grid of :func:`grid_shape`.
    Options: ``reconstruct``'s keywords, and "trace" with trace_atoms' keywords.
    """

    reconstruct: Callable[..., np.ndarray]

    def __call__(self, case: Case, options: dict) -> MethodResult:
        from atomsplat.analysis.species import label_by_weight
        from atomsplat.analysis.tracing import trace_atoms

        options = dict(options)
        trace = options.pop("trace", {})
        series = case.series
        start = time.perf_counter()
        volume = self.reconstruct(series, **options)
        traced = trace_atoms(volume, series.pixel_size, **trace)
        seconds = time.perf_counter() - start
        elements = series.elements or []
        species = None
        if elements and len(traced.intensities) >= len(elements):
            species = label_by_weight(np.clip(traced.intensities, 1e-12, None), elements)
        return MethodResult(traced.positions, species, volume, seconds)


def fbp_volume(series: TiltSeries, **options) -> np.ndarray:
    """Filtered back-projection (:func:`atomsplat.analysis.baselines.fbp`)."""
    from atomsplat.analysis.baselines import fbp

    return fbp(series.projections, series.tilt_angles, series.pixel_size, **options)


def sirt_volume(series: TiltSeries, **options) -> np.ndarray:
    """SIRT (:func:`atomsplat.analysis.baselines.sirt`)."""
    from atomsplat.analysis.baselines import sirt

    return sirt(series.projections, series.tilt_angles, series.pixel_size, **options)


def inr_volume(series: TiltSeries, **options) -> np.ndarray:
    """The implicit neural representation's volume (:func:`atomsplat.analysis.inr.fit_inr`)."""
    from atomsplat.analysis.inr import fit_inr

    return fit_inr(series.projections, series.tilt_angles, series.pixel_size, **options).volume


register("atomsplat", AtomsplatTraining("atomsplat"))
register("atomsplat-noiso", AtomsplatTraining("atomsplat-noiso"))
register("atomsplat-nomerge", AtomsplatTraining("atomsplat-nomerge"))
register("fbp", TracedReconstruction(fbp_volume))
register("sirt", TracedReconstruction(sirt_volume))
register("inr", TracedReconstruction(inr_volume))
