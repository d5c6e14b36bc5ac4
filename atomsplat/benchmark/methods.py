"""The methods a comparison runs: one runner signature and a registry by name.

A runner is any callable ``runner(case, options) -> MethodResult``: it gets one tilt series
(:class:`Case`) and its options from the preset, trains or reconstructs on the case's training
projections, and returns the atoms it finds, its volume on the common grid (:func:`grid_shape`)
and its model of the held-out projections. Runners are picklable (module-level functions or
frozen dataclasses of them), so a case can run in another process (a Ray task,
:mod:`atomsplat.batch.engine`); a runner whose attribute ``uses_gpu`` is true computes on a GPU
where the engine gives it one (the others get none). Adding a method is one entry in
:data:`METHODS` (:func:`register`); the comparison scores every method's result the same way.

Any method registered with nerfstudio (``ns-train --help`` lists them) runs too, by name, through
:class:`NerfstudioTraining`: trained by nerfstudio's trainer on the case's tilt series (the
tomography dataparser, same hold-out), scored on the held-out projections; atoms where its model
gives them (``atoms()``: atomsplat's Gaussians, the INR's traced maxima). A stock method whose
model downloads weights when it is built (nerfstudio 1.1.5's splatfacto, nerfacto, ... build LPIPS)
is skipped with a message on a machine without internet (:class:`MethodSkipped`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ClassVar, Dict, Optional

import numpy as np

from atomsplat.benchmark import BenchmarkError
from atomsplat.data.series import TiltSeries


class MethodSkipped(Exception):
    """A method that cannot run here (e.g. its model downloads weights and the machine is offline);
    the message says why, and the comparison goes on without it."""


@dataclass(frozen=True)
class Case:
    """One tilt series for the methods.

    Attributes:
        data: the dataset directory (:mod:`atomsplat.data.tiff_dataset` layout).
        series: the tilt series read from it.
        work: a directory the runner may write into (nerfstudio trainings go into subdirectories).
        holdout_every: every n-th projection is held out of training, for the projection scores
            (:func:`atomsplat.data.dataparser.split_indices`, as ``ns-train``'s hold-out); 0: none.
    """

    data: Path
    series: TiltSeries
    work: Path
    holdout_every: int = 0

    @property
    def train_indices(self) -> np.ndarray:
        """(N_train,) the projections the methods train on."""
        from atomsplat.data.dataparser import split_indices

        return split_indices(len(self.series.tilt_angles), "train", self.holdout_every)

    @property
    def held_out(self) -> np.ndarray:
        """(N_held,) the projections held out of training; empty without a hold-out."""
        if self.holdout_every <= 0:
            return np.zeros(0, dtype=int)
        from atomsplat.data.dataparser import split_indices

        held = split_indices(len(self.series.tilt_angles), "test", self.holdout_every)
        return np.zeros(0, dtype=int) if len(held) == len(self.series.tilt_angles) else held

    def training_series(self) -> TiltSeries:
        """The tilt series of the training projections only."""
        keep = self.train_indices
        series = self.series
        shifts = None if series.shifts is None else series.shifts[keep]
        return replace(
            series,
            projections=series.projections[keep],
            tilt_angles=series.tilt_angles[keep],
            shifts=shifts,
            images=None,
        )


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
        projections: (V, H, W) the method's model of the case's held-out projections
            (:attr:`Case.held_out`, in that order), data units, in the frame of the measured ones;
            None where there are none or the method cannot tell them.
        crb: the Cramer-Rao bound of the atom positions at the true atoms, A
            (:mod:`atomsplat.benchmark.bound`), where the method computes it (atomsplat on counts
            with a known truth), else None.

    A method without atoms (a radiance field) gives ``positions`` None and ``volume`` None.
    """

    positions: Optional[np.ndarray]
    species: Optional[np.ndarray]
    volume: Optional[np.ndarray]
    seconds: float
    weights: Optional[np.ndarray] = None
    projections: Optional[np.ndarray] = None
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
    """The runner of method ``name``: its entry in :data:`METHODS`, else :class:`NerfstudioTraining`
    of a method registered with nerfstudio; :class:`BenchmarkError` naming the methods if neither."""
    if name in METHODS:
        return METHODS[name]
    if name in nerfstudio_methods():
        return NerfstudioTraining(name)
    raise BenchmarkError(
        f"unknown method {name!r}; methods: {', '.join(sorted(METHODS))}, or one registered with nerfstudio "
        f"(ns-train --help lists them)"
    )


def nerfstudio_methods() -> Dict:
    """The methods registered with nerfstudio that are installed (name -> TrainerConfig); imports
    every nerfstudio plugin (seconds)."""
    from nerfstudio.configs.external_methods import ExternalMethodDummyTrainerConfig
    from nerfstudio.configs.method_configs import all_methods

    return {
        name: config for name, config in all_methods.items() if not isinstance(config, ExternalMethodDummyTrainerConfig)
    }


def grid_shape(series: TiltSeries) -> tuple:
    """(nx, ny, nz) = (W, H, H): the baselines' reconstruction grid, which every volume shares."""
    _, height, width = series.shape
    return (width, height, height)


# ----------------------------------------------------------------------------- atomsplat
@dataclass(frozen=True)
class AtomsplatTraining:
    """Train the nerfstudio method ``method`` (atomsplat or one of its ablations); its atoms are
    the Gaussians (species from their weights), its volume their exact voxelization, its model of
    the held-out projections its renders of them (learned corrections included). On counts of a
    dataset with its true atoms, and isotropic Gaussians, also the Cramer-Rao bound at the true
    atoms (:func:`atomsplat.benchmark.bound.model_truth_bound`; not part of its time).

    Options: "steps" (default 3000) and fields of the model config.
    """

    method: str
    uses_gpu: ClassVar[bool] = True  # nerfstudio trains on CUDA where it has a device

    def __call__(self, case: Case, options: dict) -> MethodResult:
        import ase.io

        from atomsplat.benchmark.bound import model_truth_bound
        from atomsplat.data.series import GROUND_TRUTH
        from atomsplat.export import load_model
        from atomsplat.training import train

        options = dict(options)
        steps = int(options.pop("steps", 3000))
        start = time.perf_counter()
        config = train(case.data, steps, case.work, method=self.method, holdout_every=case.holdout_every, **options)
        seconds = time.perf_counter() - start
        model, _ = load_model(config)
        answer = model_answer(model, case, seconds)
        if case.series.counts and model.cloud.isotropic and (case.data / GROUND_TRUTH).is_file():
            answer.crb = model_truth_bound(model, ase.io.read(case.data / GROUND_TRUTH).positions)
        return answer


@dataclass(frozen=True)
class NerfstudioTraining:
    """Train any method registered with nerfstudio on the case (module notes) and read its answer
    (:func:`model_answer`). Options: "steps" (default: the method's own) and fields of its model
    config."""

    method: str
    uses_gpu: ClassVar[bool] = True  # nerfstudio trains on CUDA where it has a device

    def __call__(self, case: Case, options: dict) -> MethodResult:
        from nerfstudio.utils.eval_utils import eval_setup

        from atomsplat.training import run_trainer

        options = dict(options)
        config = nerfstudio_config(self.method, case, options.pop("steps", None), **options)
        start = time.perf_counter()
        try:
            run_trainer(config)
        except Exception as err:
            blocked = download_failure(err)
            if blocked is None:
                raise
            raise MethodSkipped(
                f"{self.method}: skipped: its model downloads weights when it is built ({blocked}), and this "
                f"machine reaches no network; it runs where the download works"
            ) from None
        seconds = time.perf_counter() - start
        _, pipeline, _, _ = eval_setup(config.get_base_dir() / "config.yml", test_mode="inference")
        return model_answer(pipeline.model, case, seconds)


def nerfstudio_config(method: str, case: Case, steps: Optional[int] = None, **model_options):
    """The TrainerConfig of nerfstudio method ``method`` on ``case``: its data manager reads the
    case through the tomography dataparser with the case's hold-out, on CUDA when there is a
    device, else on the CPU; no viewer; ``steps`` (None: the method's own); model options set by
    name (an unknown name is an error)."""
    import copy

    import torch

    from atomsplat.data.dataparser import TomographyDataParserConfig

    config = copy.deepcopy(nerfstudio_methods()[method])
    datamanager = config.pipeline.datamanager
    datamanager.data = Path(case.data)
    datamanager.dataparser = TomographyDataParserConfig(data=Path(case.data), holdout_every=case.holdout_every)
    if steps is not None:
        config.max_num_iterations = int(steps)
    config.output_dir = Path(case.work)
    config.vis = "tensorboard"
    config.viewer.quit_on_train_completion = True
    config.save_only_latest_checkpoint = True
    config.machine.device_type = "cuda" if torch.cuda.is_available() else "cpu"
    config.set_timestamp()
    for key, value in model_options.items():
        if not hasattr(config.pipeline.model, key):
            raise BenchmarkError(f"{method} has no model option {key!r}")
        setattr(config.pipeline.model, key, value)
    return config


def download_failure(error: BaseException) -> Optional[str]:
    """The network error in the chain of ``error`` (a download that found no network), in words;
    None when there is none."""
    import socket
    import urllib.error

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (urllib.error.URLError, ConnectionError, socket.gaierror, socket.timeout)):
            return f"{type(error).__name__}: {error}"
        error = error.__cause__ or error.__context__
    return None


def model_answer(model, case: Case, seconds: float) -> MethodResult:
    """A trained nerfstudio model's answer on ``case``.

    Held-out projections: the model's image of each held-out camera of the tomography dataparser
    (``get_outputs_for_camera``), in data units: this package's models give
    "normalized_projection" (the projection over the series maximum); any other model's "rgb",
    whose grey level it learned from the 8-bit previews ``255 * clip(p / max, 0, 1)``
    (:mod:`atomsplat.data.previews`), is read back as ``mean(rgb) * max``. Atoms: ``model.atoms()``
    where the model has it, with species from its "weights" (atomsplat) or peak "intensities"
    (INR) when the dataset names its elements; volume: the exact voxelization of Gaussians with
    "sigmas" and "weights", else ``model.density_volume()``; None for a model without atoms.
    """
    import torch

    from atomsplat.analysis.species import label_by_weight
    from atomsplat.data.dataparser import TomographyDataParserConfig

    series = case.series
    top = float(series.projections.max())
    projections = None
    if len(case.held_out):
        parser = TomographyDataParserConfig(data=Path(case.data), holdout_every=case.holdout_every).setup()
        cameras = parser.get_dataparser_outputs("test").cameras
        images = []
        model.eval()
        with torch.no_grad():
            for k in range(len(cameras)):
                outputs = model.get_outputs_for_camera(cameras[k : k + 1].to(model.device))
                if "normalized_projection" in outputs:
                    normalized = outputs["normalized_projection"][..., 0]
                else:
                    normalized = outputs["rgb"].mean(dim=-1)
                images.append((normalized * top).float().cpu().numpy())
        projections = np.stack(images)
    if not hasattr(model, "atoms"):
        return MethodResult(None, None, None, seconds, projections=projections)
    found = model.atoms()
    positions = np.asarray(found["positions"], dtype=float)
    strengths = found.get("weights", found.get("intensities"))
    species = None
    if series.elements and strengths is not None and len(positions) >= len(series.elements):
        species = np.asarray(label_by_weight(np.clip(strengths, 1e-12, None), series.elements))
    if "sigmas" in found and "weights" in found:
        volume = atoms_volume(positions, found["sigmas"], found["weights"], series)
    else:
        volume = model.density_volume()
    weights = found.get("weights")
    return MethodResult(positions, species, volume, seconds, weights=weights, projections=projections)


def atoms_volume(positions, sigmas, weights, series: TiltSeries) -> np.ndarray:
    """The exact voxelization (:func:`atomsplat.render.voxelize.voxelize`) of isotropic Gaussians on
    the grid of :func:`grid_shape`: weight per A^3."""
    import torch

    from atomsplat.render.voxelize import voxelize
    from atomsplat.sim.potential import volume_origin

    shape = grid_shape(series)
    return voxelize(
        torch.from_numpy(np.asarray(positions)).float(),
        torch.from_numpy(np.asarray(sigmas)).float(),
        torch.from_numpy(np.asarray(weights)).float(),
        volume_origin(shape, series.pixel_size),
        shape,
        series.pixel_size,
    ).numpy()


# ----------------------------------------------------------------------------- reconstruct, then trace
@dataclass(frozen=True)
class TracedReconstruction:
    """A volume reconstruction followed by atom tracing (:func:`atomsplat.analysis.tracing.trace_atoms`);
    species from the traced peak intensities.

    ``reconstruct(series, **options) -> (nx, ny, nz)`` volume on the grid of :func:`grid_shape`.
    Options: ``reconstruct``'s keywords, and "trace" with trace_atoms' keywords.
    """

    reconstruct: Callable[..., np.ndarray]
    uses_gpu: ClassVar[bool] = False  # ASTRA's CPU algorithms, the INR on the CPU

    def __call__(self, case: Case, options: dict) -> MethodResult:
        from atomsplat.analysis.baselines import reproject
        from atomsplat.analysis.species import label_by_weight
        from atomsplat.analysis.tracing import trace_atoms

        options = dict(options)
        trace = options.pop("trace", {})
        series = case.training_series()
        start = time.perf_counter()
        volume = self.reconstruct(series, **options)
        traced = trace_atoms(volume, series.pixel_size, **trace)
        seconds = time.perf_counter() - start
        elements = series.elements or []
        species = None
        if elements and len(traced.intensities) >= len(elements):
            species = label_by_weight(np.clip(traced.intensities, 1e-12, None), elements)
        projections = None
        aligned = series.tilt_axis_angle == 0 and (series.shifts is None or not np.any(series.shifts))
        if len(case.held_out) and aligned:  # reproject works in the aligned frame, here the measured one
            projections = reproject(volume, case.series.tilt_angles[case.held_out], series.pixel_size)
        return MethodResult(traced.positions, species, volume, seconds, projections=projections)


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
