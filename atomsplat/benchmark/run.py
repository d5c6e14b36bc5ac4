"""Running a preset: every method on every simulated case, scored into rows; the ablation.

The unit of work is one method on one case (:func:`finish`): a registered runner
(:mod:`atomsplat.benchmark.methods`) on the simulated dataset (:mod:`atomsplat.benchmark.datasets`),
its answer scored against the truth (:func:`score`) and kept in ``WORK/results`` under the
dataset's key and the method's options, so that a later run with the same settings reuses it and
an interrupted comparison goes on where it stopped. :func:`run_comparison` loops over the preset
and writes ``results.json``, ``results.md`` and the figures (:mod:`atomsplat.benchmark.report`).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import ase
import ase.io
import numpy as np
import torch

from atomsplat.analysis.matching import match_atoms
from atomsplat.analysis.metrics import method_scores
from atomsplat.analysis.species import separability
from atomsplat.benchmark.datasets import SimulatedDataset, digest, simulated_dataset
from atomsplat.benchmark.methods import Case, MethodResult, grid_shape, runner
from atomsplat.benchmark.preset import ABLATION_METHODS, Preset, SimulationSettings
from atomsplat.benchmark.report import (
    central_slab,
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


def prepare(dataset: SimulatedDataset, work: Path) -> Tuple[Case, Truth]:
    """The case of ``dataset`` (simulated into ``work/data`` once) and its truth."""
    data = simulated_dataset(dataset, work)
    series = read_tilt_series(data)
    atoms = ase.io.read(data / GROUND_TRUTH)
    truth = Truth(
        atoms, np.array(atoms.get_chemical_symbols()), potential_volume(atoms, series.pixel_size, grid_shape(series))
    )
    return Case(data, series, Path(work) / "runs"), truth


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def score(
    result: MethodResult, truth: Truth, particle: str, scheme: str, tilt: str, method: str, dose: Optional[float] = None
) -> Row:
    """The row of ``result`` against ``truth`` (species scored when the method tells them and the
    particle has more than one); ``dose``: e/A^2 of the case's counts, None for float data."""
    labelled = result.species is not None and len(set(truth.species)) > 1
    scores = method_scores(
        result.positions,
        truth.atoms.positions,
        result.species if labelled else None,
        truth.species if labelled else None,
        result.volume,
        truth.volume,
    )
    return Row(
        particle=particle,
        scheme=scheme,
        tilt=tilt,
        method=method,
        **{k: _plain(v) for k, v in scores.items()},
        seconds=round(float(result.seconds), 1),
        dose=dose,
        crb=None if result.crb is None else float(result.crb),
    )


def finish(
    method: str, options: dict, dataset: SimulatedDataset, scheme: str, case: Case, truth: Truth, work: Path, log: Log
) -> Finished:
    """``method`` with ``options`` on the ``case`` of ``dataset`` (its tilt scheme named ``scheme``),
    scored; kept from an earlier run with the same settings when there is one."""
    settings = {"dataset": dataset.settings(), "method": method, "options": options}
    path = Path(work) / "results" / dataset.key() / f"{method}_{digest({'method': method, 'options': options})}.npz"
    label = f"[{dataset.particle} {scheme}] {method}"
    finished = load_finished(path, settings)
    if finished is not None:
        finished.row = replace(finished.row, scheme=scheme)
        log(f"{label}: kept from {path}")
    else:
        log(f"{label} ...")
        result = runner(method)(case, options)
        row = score(result, truth, dataset.particle, scheme, dataset.tilt, method, dataset.simulation.dose)
        finished = Finished(row, result.positions, central_slab(result.volume, case.series.pixel_size), result.weights)
        save_finished(path, settings, finished)
    log(f"{label}: {row_summary(finished.row)}")
    return finished


def run_case(
    particle: str,
    scheme: str,
    preset: Preset,
    work: Path,
    figures: Path,
    log: Log = print,
    simulation: Optional[SimulationSettings] = None,
) -> List[Row]:
    """All the preset's methods on ``particle`` under its tilt scheme named ``scheme``, simulated
    with ``simulation`` (None: the preset's; one of :meth:`Preset.simulations` for a dose axis);
    returns their rows, each with the case's bound (:func:`share_bound`), and draws the slice
    figure into ``figures``."""
    tilt = preset.schemes[scheme]
    simulation = preset.simulation if simulation is None else simulation
    dataset = SimulatedDataset(particle, preset.size, tilt, simulation)
    case, truth = prepare(dataset, work)
    finished = {
        method: finish(method, options, dataset, scheme, case, truth, work, log)
        for method, options in preset.methods.items()
    }
    dose = "" if simulation.dose is None else f"_dose{simulation.dose:g}"
    plot_slices(
        truth.atoms,
        central_slab(truth.volume, case.series.pixel_size),
        finished,
        case.series.pixel_size,
        figures / f"slices_{particle}_{scheme}{dose}.png",
        title=f"{particle}, tilts {tilt}" + ("" if simulation.dose is None else f", {simulation.dose:g} e/A^2"),
    )
    return share_bound([f.row for f in finished.values()])


def run_ablation(preset: Preset, work: Path, figures: Path, log: Log = print) -> List[AblationRow]:
    """atomsplat with and without isotropy and merging on the ablation's particle: Gaussians per
    atom, TPR/FPR, species separation; draws the weight histograms into ``figures``."""
    spec = preset.ablation
    dataset = SimulatedDataset(spec.particle, spec.size or preset.size, spec.scheme, preset.simulation)
    case, truth = prepare(dataset, work)
    rows, weights_by_method = [], {}
    for method in ABLATION_METHODS:
        finished = finish(method, spec.options(method), dataset, "ablation", case, truth, work, log)
        pred, true, _ = match_atoms(finished.positions, truth.atoms.positions)
        matched_species = truth.species[true]
        matched_weights = finished.weights[pred]
        weights_by_method[method] = (matched_weights, matched_species)
        row = AblationRow(
            **finished.row.to_dict(),
            gaussians_per_atom=finished.row.n_pred / finished.row.n_true,
            separability=separability(matched_weights, matched_species) if len(set(matched_species)) > 1 else None,
        )
        rows.append(row)
        log(f"[ablation] {method}: {row.gaussians_per_atom:.2f} Gaussians per atom, separability {row.separability}")
    plot_weight_histograms(weights_by_method, figures / f"ablation_{spec.particle}_weights.png")
    return rows


def write_results(results: Results, output: Path) -> None:
    """``results.json`` and ``results.md`` in ``output``."""
    results.write(output / "results.json")
    (output / "results.md").write_text(results_markdown(results))


def run_comparison(preset: Preset, output: Path, work: Path, log: Log = print) -> Results:
    """Run a preset; write ``results.json``, ``results.md`` (after every case) and ``figures/``
    into ``output``, simulated data, trainings and finished results into ``work``."""
    output, work = Path(output), Path(work)
    figures = output / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    results = Results(machine(), preset)
    started = time.perf_counter()
    for particle in preset.particles:
        for scheme in preset.schemes:
            for simulation in preset.simulations():
                results.rows += run_case(particle, scheme, preset, work, figures, log, simulation)
                write_results(results, output)
    if results.rows:
        plot_scores(results.rows, figures)
    if preset.ablation:
        results.ablation = run_ablation(preset, work, figures, log)
    results.total_seconds = round(time.perf_counter() - started, 1)
    write_results(results, output)
    return results
