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
from typing import Callable, List, Tuple

import ase
import ase.io
import numpy as np
import torch

from atomsplat.analysis.image_metrics import projection_scores
from atomsplat.analysis.matching import PAPER_MAX_DISTANCE, match_atoms
from atomsplat.analysis.metrics import method_scores
from atomsplat.analysis.species import separability
from atomsplat.benchmark.datasets import SimulatedDataset, digest, simulated_dataset
from atomsplat.benchmark.methods import Case, MethodResult, MethodSkipped, grid_shape, runner
from atomsplat.benchmark.preset import ABLATION_METHODS, Preset
from atomsplat.benchmark.report import (
    central_slab,
    plot_bars,
    plot_projections,
    plot_slices,
    plot_weight_histograms,
    results_markdown,
    row_summary,
)
from atomsplat.benchmark.results import AblationRow, Finished, Results, Row, load_finished, save_finished
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


def score(result: MethodResult, truth: Truth, case: Case, particle: str, scheme: str, tilt: str, method: str) -> Row:
    """The row of ``result`` against ``truth`` (species scored when the method tells them and the
    particle has more than one; atom scores None for a method without atoms) and of its model of
    the ``case``'s held-out projections against them."""
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
    )


def finish(
    method: str, options: dict, dataset: SimulatedDataset, scheme: str, case: Case, truth: Truth, work: Path, log: Log
) -> Finished:
    """``method`` with ``options`` on the ``case`` of ``dataset`` (its tilt scheme named ``scheme``),
    scored; kept from an earlier run with the same settings (hold-out included) when there is one.
    A method that cannot run here raises :class:`MethodSkipped` (after logging why)."""
    settings = {
        "dataset": dataset.settings(),
        "method": method,
        "options": options,
        "holdout_every": case.holdout_every,
    }
    key = digest({"method": method, "options": options, "holdout_every": case.holdout_every})
    path = Path(work) / "results" / dataset.key() / f"{method}_{key}.npz"
    label = f"[{dataset.particle} {scheme}] {method}"
    finished = load_finished(path, settings)
    if finished is not None:
        finished.row = replace(finished.row, scheme=scheme)
        log(f"{label}: kept from {path}")
    else:
        log(f"{label} ...")
        try:
            result = runner(method)(case, options)
        except MethodSkipped as skipped:
            log(f"{label}: {skipped}")
            raise
        row = score(result, truth, case, dataset.particle, scheme, dataset.tilt, method)
        slab = None if result.volume is None else central_slab(result.volume, case.series.pixel_size)
        projection = None if result.projections is None else result.projections[0]
        finished = Finished(row, result.positions, slab, result.weights, projection)
        save_finished(path, settings, finished)
    log(f"{label}: {row_summary(finished.row)}")
    return finished


def run_case(
    particle: str, scheme: str, preset: Preset, work: Path, figures: Path, log: Log = print, skipped: dict = None
) -> List[Row]:
    """All the preset's methods on ``particle`` under its tilt scheme named ``scheme``; returns
    their rows and draws the slice figure (and, with a hold-out, the held-out projection figure)
    into ``figures``. Methods that cannot run here are left out, and why goes into ``skipped``
    (method -> reason)."""
    tilt = preset.schemes[scheme]
    dataset = SimulatedDataset(particle, preset.size, tilt, preset.simulation)
    case, truth = prepare(dataset, work, preset.holdout_every)
    finished = {}
    for method, options in preset.methods.items():
        try:
            finished[method] = finish(method, options, dataset, scheme, case, truth, work, log)
        except MethodSkipped as err:
            if skipped is not None:
                skipped[method] = str(err)
    with_atoms = {name: f for name, f in finished.items() if f.positions is not None and f.slab is not None}
    plot_slices(
        truth.atoms,
        central_slab(truth.volume, case.series.pixel_size),
        with_atoms,
        case.series.pixel_size,
        figures / f"slices_{particle}_{scheme}.png",
        title=f"{particle}, tilts {tilt}",
    )
    modelled = {name: f.projection for name, f in finished.items() if f.projection is not None}
    if modelled:
        first = int(case.held_out[0])
        plot_projections(
            case.series.projections[first],
            modelled,
            case.series.pixel_size,
            figures / f"projections_{particle}_{scheme}.png",
            title=f"{particle}, held-out projection at {case.series.tilt_angles[first]:g} degrees",
        )
    return [f.row for f in finished.values()]


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
            results.rows += run_case(particle, scheme, preset, work, figures, log, results.skipped)
            write_results(results, output)
    if results.rows:
        plot_bars(results.rows, figures / "bars.png")
    if preset.ablation:
        results.ablation = run_ablation(preset, work, figures, log)
    results.total_seconds = round(time.perf_counter() - started, 1)
    write_results(results, output)
    return results
