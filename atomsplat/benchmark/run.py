"""Running a preset: every method on every simulated case, scored into rows; the ablation.

The unit of work is one method on one case (:class:`MethodRun`, computed by :func:`compute`): a
registered runner (:mod:`atomsplat.benchmark.methods`) on the simulated dataset
(:mod:`atomsplat.benchmark.datasets`), every ``holdout_every``-th projection held out of its
training, its answer scored against the truth (:func:`score`) and kept in ``WORK/results`` under
the dataset's key, the method's options and the hold-out, so that a later run with the same
settings reuses it and an interrupted comparison goes on where it stopped. :func:`finish_all`
simulates each dataset once, in this process, and computes the runs that are not kept on an engine
(:mod:`atomsplat.batch.engine`: one after another, or as Ray tasks); a run that fails is reported
and the others go on, a method that cannot run here (:class:`MethodSkipped`) is left out with its
reason. :func:`run_comparison` does so for a whole preset, one case per particle, tilt scheme and
dose (:meth:`Preset.simulations`; a case's rows share its Cramer-Rao bound, :func:`share_bound`),
and writes ``results.json``, ``results.md`` and the figures (:mod:`atomsplat.benchmark.report`)
as the cases complete.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import ase
import ase.io
import numpy as np
import torch

from atomsplat.analysis.image_metrics import projection_scores
from atomsplat.analysis.matching import PAPER_MAX_DISTANCE, match_atoms
from atomsplat.analysis.metrics import method_scores
from atomsplat.analysis.species import separability
from atomsplat.batch.engine import EngineOptions, Failure, Job, run_jobs
from atomsplat.benchmark.datasets import SimulatedDataset, digest, simulated_dataset
from atomsplat.benchmark.methods import Case, MethodResult, MethodSkipped, Runner, grid_shape, runner
from atomsplat.benchmark.preset import ABLATION_METHODS, Preset, SimulationSettings
from atomsplat.benchmark.report import (
    central_slab,
    plot_projections,
    plot_scores,
    plot_slices,
    plot_weight_histograms,
    results_markdown,
    row_summary,
)
from atomsplat.benchmark.results import (
    AblationRow,
    Finished,
    Results,
    Row,
    load_finished,
    save_finished,
    share_bound,
)
from atomsplat.data.formats import read_tilt_series
from atomsplat.data.series import GROUND_TRUTH
from atomsplat.sim.potential import potential_volume

Log = Callable[[str], None]
SERIAL = EngineOptions("serial")


def machine() -> str:
    """The machine the numbers were measured on, in words."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores"
    return f"{platform.processor() or platform.machine()}, {device}, torch {torch.__version__}"


@dataclass
class Truth:
    """What a case's answers are scored against.

    Attributes:
        atoms: the true structure (A, sample frame).
        species: (T,) its chemical symbols.
        volume: (nx, ny, nz) its potential on the common grid (:func:`atomsplat.benchmark.methods.grid_shape`), V.
    """

    atoms: ase.Atoms
    species: np.ndarray
    volume: np.ndarray


def prepare(dataset: SimulatedDataset, work: Path, holdout_every: int = 0) -> Tuple[Case, Truth]:
    """The case of ``dataset`` (simulated into ``work/data`` once), every ``holdout_every``-th
    projection held out of training (0: none), and its truth."""
    data = simulated_dataset(dataset, work)
    series = read_tilt_series(data)
    atoms = ase.io.read(data / GROUND_TRUTH)
    truth = Truth(
        atoms, np.array(atoms.get_chemical_symbols()), potential_volume(atoms, series.pixel_size, grid_shape(series))
    )
    return Case(data, series, Path(work) / "runs", holdout_every), truth


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def projection_scores_of(result: MethodResult, case: Case) -> dict:
    """ "projection_psnr" and "projection_ssim": the means over the case's held-out projections of the
    scores of ``result.projections`` (:func:`atomsplat.analysis.image_metrics.projection_scores`,
    data range: the measured series' maximum minus minimum); None for both without them."""
    if result.projections is None or not len(case.held_out):
        return {"projection_psnr": None, "projection_ssim": None}
    measured = case.series.projections
    data_range = float(measured.max() - measured.min())
    scores = [projection_scores(m, measured[k], data_range) for m, k in zip(result.projections, case.held_out)]
    return {
        name: float(np.mean([s[name.split("_")[1]] for s in scores])) for name in ("projection_psnr", "projection_ssim")
    }


def score(
    result: MethodResult,
    truth: Truth,
    case: Case,
    particle: str,
    scheme: str,
    tilt: str,
    method: str,
    dose: Optional[float] = None,
) -> Row:
    """The row of ``result`` against ``truth`` (species scored when the method tells them and the
    particle has more than one; atom scores None for a method without atoms) and of its model of
    the ``case``'s held-out projections against them; ``dose``: e/A^2 of the case's counts, None
    for float data."""
    if result.positions is None:
        scores = dict.fromkeys(("n_pred", "n_matched", "tpr", "fpr", "rmse", "species_accuracy", "ssim"))
        scores.update(n_true=len(truth.atoms), max_distance=PAPER_MAX_DISTANCE)
    else:
        labelled = result.species is not None and len(set(truth.species)) > 1
        scores = method_scores(
            result.positions,
            truth.atoms.positions,
            result.species if labelled else None,
            truth.species if labelled else None,
            result.volume,
            truth.volume,
        )
    projections = projection_scores_of(result, case)
    return Row(
        particle=particle,
        scheme=scheme,
        tilt=tilt,
        method=method,
        **{k: _plain(v) for k, v in scores.items()},
        seconds=round(float(result.seconds), 1),
        **projections,
        dose=dose,
        crb=None if result.crb is None else float(result.crb),
    )


@dataclass(frozen=True)
class MethodRun:
    """One method with its options on one simulated dataset: the unit of work of a comparison.

    Attributes:
        method: a name in :data:`atomsplat.benchmark.methods.METHODS` or of a nerfstudio method.
        options: its runner's options.
        dataset: the simulated tilt series.
        scheme: the name of its tilt scheme in the preset ("ablation" for the ablation's runs).
        holdout_every: every n-th projection held out of its training (:attr:`Case.holdout_every`); 0: none.
    """

    method: str
    options: dict
    dataset: SimulatedDataset
    scheme: str
    holdout_every: int = 0

    @property
    def label(self) -> str:
        """The run in the progress log and as a key: "[particle scheme] method", with the dose of a
        case of counts: "[particle scheme dose] method"."""
        dose = self.dataset.simulation.dose
        return f"[{self.dataset.particle} {self.scheme}{'' if dose is None else f' {dose:g} e/A^2'}] {self.method}"

    @property
    def case_name(self) -> str:
        """Its case in figure names: "<particle>_<scheme>", and "_dose<d>" for a case of counts."""
        dose = self.dataset.simulation.dose
        return f"{self.dataset.particle}_{self.scheme}{'' if dose is None else f'_dose{dose:g}'}"

    @property
    def case_title(self) -> str:
        """Its case in figure titles: the particle, and the dose of a case of counts."""
        dose = self.dataset.simulation.dose
        return self.dataset.particle + ("" if dose is None else f" at {dose:g} e/A^2")

    def settings(self) -> dict:
        """What the result depends on (kept with it: a result of other settings, another hold-out
        included, is not reused)."""
        return {
            "dataset": self.dataset.settings(),
            "method": self.method,
            "options": self.options,
            "holdout_every": self.holdout_every,
        }

    def name(self) -> str:
        """The method and a digest of its options and hold-out (file names under the dataset's key)."""
        key = digest({"method": self.method, "options": self.options, "holdout_every": self.holdout_every})
        return f"{self.method}_{key}"

    def result_path(self, work: Path) -> Path:
        """Where its :class:`Finished` is kept: ``WORK/results/<dataset key>/<name>.npz``."""
        return Path(work) / "results" / self.dataset.key() / f"{self.name()}.npz"

    def case(self, case: Case) -> Case:
        """``case`` (its dataset's, from :func:`prepare`) with this run's hold-out."""
        return replace(case, holdout_every=self.holdout_every)

    def kept(self, work: Path) -> Optional[Finished]:
        """Its :class:`Finished` from an earlier run with the same settings (the row under this
        scheme's name), or None."""
        finished = load_finished(self.result_path(work), self.settings())
        if finished is not None:
            finished.row = replace(finished.row, scheme=self.scheme)
        return finished


def compute(run: MethodRun, method: Runner, case: Case, truth: Truth, work: Path) -> Union[Finished, MethodSkipped]:
    """``method`` (the runner of ``run.method``) on ``case`` with the run's hold-out, scored against
    ``truth`` and kept in ``work`` (:meth:`MethodRun.result_path`); trainings go to
    ``WORK/runs/<dataset key>/<name>``. A method that cannot run here gives its
    :class:`MethodSkipped` (returned, not raised: it is no failure). A picklable job: it runs in
    this process or as a Ray task."""
    case = replace(run.case(case), work=Path(work) / "runs" / run.dataset.key() / run.name())
    try:
        result = method(case, run.options)
    except MethodSkipped as skipped:
        return skipped
    dataset = run.dataset
    row = score(result, truth, case, dataset.particle, run.scheme, dataset.tilt, run.method, dataset.simulation.dose)
    slab = None if result.volume is None else central_slab(result.volume, case.series.pixel_size)
    projection = None if result.projections is None else result.projections[0]
    finished = Finished(row, result.positions, slab, result.weights, projection)
    save_finished(run.result_path(work), run.settings(), finished)
    return finished


def prepare_all(runs: List[MethodRun], work: Path) -> Dict[str, Tuple[Case, Truth]]:
    """The case (no hold-out: each run sets its own, :meth:`MethodRun.case`) and truth of every
    dataset of ``runs``, by its key (each simulated once)."""
    prepared = {}
    for run in runs:
        if run.dataset.key() not in prepared:
            prepared[run.dataset.key()] = prepare(run.dataset, work)
    return prepared


def finish_all(
    runs: List[MethodRun],
    prepared: Dict[str, Tuple[Case, Truth]],
    work: Path,
    engine: EngineOptions = SERIAL,
    log: Log = print,
    done: Callable[[MethodRun, Optional[Finished]], None] = lambda run, finished: None,
    skipped: Optional[Dict[str, str]] = None,
) -> Tuple[Dict[str, Finished], List[Failure]]:
    """Every run of ``runs`` (cases and truths from :func:`prepare_all`): kept from an earlier run
    with the same settings, or computed on ``engine``. ``done(run, finished)`` after each that
    finished, the kept ones first, or was skipped (``finished`` None; why, logged, goes into
    ``skipped``: method -> reason). Returns the finished runs by label and the failures."""
    work = Path(work).resolve()  # Ray workers need not share this process's directory
    finished: Dict[str, Finished] = {}
    jobs, pending = [], {}
    for run in runs:
        kept = run.kept(work)
        if kept is not None:
            log(f"{run.label}: kept from {run.result_path(work)}")
            log(f"{run.label}: {row_summary(kept.row)}")
            finished[run.label] = kept
            done(run, kept)
            continue
        case, truth = prepared[run.dataset.key()]
        method = runner(run.method)
        pending[run.label] = run
        log_file = work / "logs" / run.dataset.key() / f"{run.name()}.log"
        uses_gpu = getattr(method, "uses_gpu", False)
        jobs.append(Job(run.label, compute, (run, method, case, truth, work), uses_gpu, log_file))

    def on_done(job: Job, value: Union[Finished, MethodSkipped]) -> None:
        run = pending[job.key]
        if isinstance(value, MethodSkipped):
            log(f"{run.label}: {value}")
            if skipped is not None:
                skipped[run.method] = str(value)
            done(run, None)
            return
        finished[run.label] = value
        log(f"{run.label}: {row_summary(value.row)}")
        done(run, value)

    failures = run_jobs(jobs, engine, on_done, log)
    return finished, failures


def case_runs(
    particle: str, scheme: str, preset: Preset, simulation: Optional[SimulationSettings] = None
) -> List[MethodRun]:
    """The preset's methods on ``particle`` under its tilt scheme named ``scheme``, with the
    preset's hold-out, simulated with ``simulation`` (None: the preset's; one of
    :meth:`Preset.simulations` for a dose axis)."""
    simulation = preset.simulation if simulation is None else simulation
    dataset = SimulatedDataset(particle, preset.size, preset.schemes[scheme], simulation)
    return [
        MethodRun(method, options, dataset, scheme, preset.holdout_every) for method, options in preset.methods.items()
    ]


def ablation_runs(preset: Preset) -> List[MethodRun]:
    """The ablation's runs (none without one), on every projection."""
    spec = preset.ablation
    if spec is None:
        return []
    dataset = SimulatedDataset(spec.particle, spec.size or preset.size, spec.scheme, preset.simulation)
    return [MethodRun(method, spec.options(method), dataset, "ablation") for method in ABLATION_METHODS]


def slices_figure(
    runs: List[MethodRun], finished: Dict[str, Finished], case: Case, truth: Truth, figures: Path
) -> Path:
    """The slice figure of one case's finished runs with atoms and a volume
    (:func:`atomsplat.benchmark.report.plot_slices`): ``slices_<particle>_<scheme>.png``, or
    ``slices_<particle>_<scheme>_dose<d>.png`` for a case of counts (:attr:`MethodRun.case_name`)."""
    with_atoms = {
        run.method: finished[run.label]
        for run in runs
        if run.label in finished and finished[run.label].positions is not None and finished[run.label].slab is not None
    }
    return plot_slices(
        truth.atoms,
        central_slab(truth.volume, case.series.pixel_size),
        with_atoms,
        case.series.pixel_size,
        Path(figures) / f"slices_{runs[0].case_name}.png",
        title=f"{runs[0].case_title}, tilts {runs[0].dataset.tilt}",
    )


def projections_figure(
    runs: List[MethodRun], finished: Dict[str, Finished], case: Case, figures: Path
) -> Optional[Path]:
    """The first held-out projection of one case and the finished runs' models of it
    (:func:`atomsplat.benchmark.report.plot_projections`): ``projections_<case name>.png``
    (:attr:`MethodRun.case_name`); None (no figure) when no run models it."""
    modelled = {
        run.method: finished[run.label].projection
        for run in runs
        if run.label in finished and finished[run.label].projection is not None
    }
    if not modelled:
        return None
    case = runs[0].case(case)
    first = int(case.held_out[0])
    return plot_projections(
        case.series.projections[first],
        modelled,
        case.series.pixel_size,
        Path(figures) / f"projections_{runs[0].case_name}.png",
        title=f"{runs[0].case_title}, held-out projection at {case.series.tilt_angles[first]:g} degrees",
    )


def case_figures(runs: List[MethodRun], finished: Dict[str, Finished], case: Case, truth: Truth, figures: Path):
    """The slice figure and, with a hold-out, the held-out projection figure of one case."""
    slices_figure(runs, finished, case, truth, figures)
    projections_figure(runs, finished, case, figures)


def run_case(
    particle: str,
    scheme: str,
    preset: Preset,
    work: Path,
    figures: Path,
    log: Log = print,
    skipped: Optional[Dict[str, str]] = None,
    engine: EngineOptions = SERIAL,
    simulation: Optional[SimulationSettings] = None,
) -> List[Row]:
    """All the preset's methods on ``particle`` under its tilt scheme named ``scheme``, simulated
    with ``simulation`` (None: the preset's); returns the rows of those that finished, each with
    the case's bound (:func:`share_bound`), and draws the slice figure (and, with a hold-out, the
    held-out projection figure) into ``figures``. Methods that cannot run here are left out, and
    why goes into ``skipped`` (method -> reason)."""
    runs = case_runs(particle, scheme, preset, simulation)
    prepared = prepare_all(runs, work)
    finished, _ = finish_all(runs, prepared, work, engine, log, skipped=skipped)
    case_figures(runs, finished, *prepared[runs[0].dataset.key()], figures)
    return case_rows(runs, finished)


def case_rows(runs: List[MethodRun], finished: Dict[str, Finished]) -> List[Row]:
    """The rows of one case's finished runs, each with the case's bound (:func:`share_bound`)."""
    return share_bound([finished[run.label].row for run in runs if run.label in finished])


def ablation_rows(
    runs: List[MethodRun], finished: Dict[str, Finished], truth: Truth, figures: Path, log: Log = print
) -> List[AblationRow]:
    """atomsplat with and without isotropy and merging on the ablation's particle (the finished
    ones of ``runs``): Gaussians per atom, TPR/FPR, species separation; draws the weight
    histograms into ``figures``."""
    rows, weights_by_method = [], {}
    for run in runs:
        if run.label not in finished:
            continue
        done = finished[run.label]
        pred, true, _ = match_atoms(done.positions, truth.atoms.positions)
        matched_species = truth.species[true]
        matched_weights = done.weights[pred]
        weights_by_method[run.method] = (matched_weights, matched_species)
        row = AblationRow(
            **done.row.to_dict(),
            gaussians_per_atom=done.row.n_pred / done.row.n_true,
            separability=separability(matched_weights, matched_species) if len(set(matched_species)) > 1 else None,
        )
        rows.append(row)
        log(
            f"[ablation] {run.method}: {row.gaussians_per_atom:.2f} Gaussians per atom, separability {row.separability}"
        )
    if weights_by_method:
        plot_weight_histograms(weights_by_method, Path(figures) / f"ablation_{runs[0].dataset.particle}_weights.png")
    return rows


def write_results(results: Results, output: Path) -> None:
    """``results.json`` and ``results.md`` in ``output``."""
    results.write(output / "results.json")
    (output / "results.md").write_text(results_markdown(results))


def run_comparison(
    preset: Preset, output: Path, work: Path, log: Log = print, engine: EngineOptions = SERIAL
) -> Tuple[Results, List[Failure]]:
    """Run a preset on ``engine``; write ``results.json``, ``results.md`` (again as each case
    completes) and ``figures/`` into ``output``, simulated data, trainings and finished results
    into ``work``. Returns the results (methods that cannot run here in ``results.skipped``) and
    the runs that failed (their rows are missing; the same command run again computes those, and
    only those)."""
    output, work = Path(output), Path(work)
    figures = output / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    results = Results(f"{machine()}; {engine.describe()}", preset)
    started = time.perf_counter()
    cases = [  # one case per particle, scheme and dose (one dataset each)
        case_runs(particle, scheme, preset, simulation)
        for particle in preset.particles
        for scheme in preset.schemes
        for simulation in preset.simulations()
    ]
    ablation = ablation_runs(preset)
    everything = [run for runs in cases for run in runs] + ablation
    prepared = prepare_all(everything, work)
    finished: Dict[str, Finished] = {}
    ended = set()  # labels of the runs finished or skipped

    def rows() -> List[Row]:
        return [row for runs in cases for row in case_rows(runs, finished)]

    def done(run: MethodRun, value: Optional[Finished]) -> None:
        ended.add(run.label)
        if value is not None:
            finished[run.label] = value
        for runs in cases:
            if run in runs and all(r.label in ended for r in runs):
                case_figures(runs, finished, *prepared[run.dataset.key()], figures)
                results.rows = rows()
                write_results(results, output)

    _, failures = finish_all(everything, prepared, work, engine, log, done, results.skipped)
    results.rows = rows()
    if results.rows:
        plot_scores(results.rows, figures)
    if ablation:
        results.ablation = ablation_rows(ablation, finished, prepared[ablation[0].dataset.key()][1], figures, log)
    results.total_seconds = round(time.perf_counter() - started, 1)
    write_results(results, output)
    for failure in failures:
        log(f"FAILED {failure.summary()}")
    return results, failures
