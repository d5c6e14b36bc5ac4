"""Every method on every particle and tilt scheme: the paper's evaluation as one reproducible run.

A preset (JSON, ``configs/benchmark_*.json``) names the particles (:mod:`atomsplat.sim.structures`),
their size, the tilt schemes, the simulation (pixel size, probe blur, noise) and the methods with
their options. For each particle and scheme the tilt series is simulated with abTEM once (and kept
in the work directory), the true potential volume is computed on the reconstruction grid, and
every method runs on the same projections:

- ``atomsplat``: nerfstudio training of this package's model; its atoms are the Gaussians, its
  volume their exact voxelization (:func:`atomsplat.render.voxelize.voxelize`, fitted widths,
  which include the probe blur, as every method's volume does);
- ``fbp``, ``sirt``: classical reconstructions (:mod:`atomsplat.analysis.baselines`) followed by
  atom tracing (:mod:`atomsplat.analysis.tracing`);
- ``inr``: an implicit neural representation (:mod:`atomsplat.analysis.inr`) followed by tracing.

Species of traced atoms come from their peak intensities, those of atomsplat from its weights,
both by the same 1-D k-means (:func:`atomsplat.analysis.species.label_by_weight`). Rows hold
TPR, FPR, RMSE and species accuracy (0.75 A matching), SSIM (:mod:`atomsplat.analysis.metrics`)
and the method's wall time. An ablation of atomsplat without isotropy and without merging runs on
the nanotube when the preset asks for it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import ase
import ase.io
import numpy as np
import torch

from atomsplat.analysis.matching import match_atoms
from atomsplat.analysis.metrics import method_scores
from atomsplat.analysis.species import label_by_weight, separability
from atomsplat.analysis.tracing import trace_atoms
from atomsplat.data.formats import read_tilt_series, write_tilt_series
from atomsplat.data.series import TiltSeries, parse_tilt_scheme
from atomsplat.render.voxelize import voxelize
from atomsplat.sim.potential import potential_volume, volume_origin
from atomsplat.sim.simulate import simulate_tilt_series
from atomsplat.sim.structures import PARTICLES, build_particle

METHODS = ("atomsplat", "fbp", "sirt", "inr")


@dataclass
class Preset:
    """What a comparison runs (the fields of a ``configs/benchmark_*.json`` file).

    Attributes:
        particles: names in :data:`atomsplat.sim.structures.PARTICLES`.
        size: "quick" or "full" (the builders' sizes).
        schemes: tilt schemes by name, e.g. {"all": "-90:90:1", "wedge": "-70:70:3"}.
        pixel_size: A; also the voxel size of every volume.
        probe_sigma: Gaussian blur of the projections, A.
        noise_sigma: additive Gaussian noise, V A.
        seed: seeds the structures and the noise.
        methods: method name -> options (atomsplat: "steps" and model-config fields; fbp: fbp's
            keywords; sirt: sirt's; inr: fit_inr's; any: "trace" with trace_atoms' keywords).
        ablation: None, or {"particle", "size", "scheme", "steps", "merge_distance"}: atomsplat,
            atomsplat-noiso and atomsplat-nomerge on that particle.
    """

    particles: list
    size: str = "full"
    schemes: dict = field(default_factory=lambda: {"all": "-90:90:1", "wedge": "-70:70:3"})
    pixel_size: float = 0.25
    probe_sigma: float = 0.5
    noise_sigma: float = 50.0
    seed: int = 0
    methods: dict = field(default_factory=lambda: {name: {} for name in METHODS})
    ablation: Optional[dict] = None


def load_preset(path: Path) -> Preset:
    """Read a preset; errors name the file and the problem."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        preset = Preset(**raw)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such preset") from None
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path}: not a valid preset: {err}") from None
    unknown = [p for p in preset.particles if p not in PARTICLES] + [m for m in preset.methods if m not in METHODS]
    if unknown:
        raise ValueError(
            f"{path}: unknown particles or methods {unknown}; particles: {sorted(PARTICLES)}, methods: {METHODS}"
        )
    for name, scheme in preset.schemes.items():
        try:
            parse_tilt_scheme(scheme)
        except ValueError as err:
            raise ValueError(f"{path}: tilt scheme {name!r}: {err}") from None
    return preset


def machine() -> str:
    """The machine the numbers were measured on, in words."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores"
    return f"{platform.processor() or platform.machine()}, {device}, torch {torch.__version__}"


# ----------------------------------------------------------------------------- data
def simulated_case(particle: str, scheme: str, preset: Preset, work: Path, size: Optional[str] = None) -> Path:
    """The dataset directory of ``particle`` under tilt ``scheme``: simulated once, then reused."""
    size = size or preset.size
    directory = work / "data" / f"{particle}_{size}_{scheme.replace(':', '_')}"
    if not (directory / "projections.tif").is_file():
        atoms = build_particle(particle, size, preset.seed)
        series = simulate_tilt_series(
            atoms,
            parse_tilt_scheme(scheme),
            preset.pixel_size,
            preset.probe_sigma,
            preset.noise_sigma,
            seed=preset.seed,
        )
        series.elements = list(PARTICLES[particle].elements)
        write_tilt_series(directory, series, ground_truth=atoms, overwrite=True)
    return directory


def grid_shape(series: TiltSeries) -> tuple:
    """(nx, ny, nz) = (W, H, H): the baselines' reconstruction grid, which every volume shares."""
    _, height, width = series.shape
    return (width, height, height)


# ----------------------------------------------------------------------------- methods
@dataclass
class Found:
    """A method's answer: atoms (A, sample frame), their species, its volume and its wall time."""

    positions: np.ndarray
    species: Optional[np.ndarray]
    volume: np.ndarray
    seconds: float
    extra: dict = field(default_factory=dict)


def _labels(values, elements) -> Optional[np.ndarray]:
    if len(elements) < 1 or len(values) < len(elements):
        return None
    return label_by_weight(np.clip(values, 1e-12, None), elements)


def _traced(volume: np.ndarray, series: TiltSeries, options: dict, seconds: float) -> Found:
    start = time.perf_counter()
    traced = trace_atoms(volume, series.pixel_size, **options.get("trace", {}))
    seconds += time.perf_counter() - start
    return Found(traced.positions, _labels(traced.intensities, series.elements), volume, seconds)


def run_atomsplat(data: Path, series: TiltSeries, options: dict, work: Path, method: str = "atomsplat") -> Found:
    """Train atomsplat (or an ablation ``method``) through nerfstudio; atoms and voxelized volume."""
    from atomsplat.export import atoms_from_model, load_model
    from atomsplat.training import train

    options = dict(options)
    steps = int(options.pop("steps", 3000))
    options.pop("trace", None)
    start = time.perf_counter()
    config = train(data, steps, work / "runs", method=method, **options)
    seconds = time.perf_counter() - start
    model, _ = load_model(config)
    atoms = atoms_from_model(model)
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
    return Found(
        atoms.positions, species, volume, seconds, {"weights": atoms.arrays["weight"], "gaussians": len(atoms)}
    )


def run_fbp(series: TiltSeries, options: dict) -> Found:
    from atomsplat.analysis.baselines import fbp

    start = time.perf_counter()
    volume = fbp(series.projections, series.tilt_angles, series.pixel_size, **_reconstruction_options(options))
    return _traced(volume, series, options, time.perf_counter() - start)


def run_sirt(series: TiltSeries, options: dict) -> Found:
    from atomsplat.analysis.baselines import sirt

    start = time.perf_counter()
    volume = sirt(series.projections, series.tilt_angles, series.pixel_size, **_reconstruction_options(options))
    return _traced(volume, series, options, time.perf_counter() - start)


def run_inr(series: TiltSeries, options: dict) -> Found:
    from atomsplat.analysis.inr import fit_inr

    start = time.perf_counter()
    fitted = fit_inr(series.projections, series.tilt_angles, series.pixel_size, **_reconstruction_options(options))
    return _traced(fitted.volume, series, options, time.perf_counter() - start)


def _reconstruction_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "trace"}


# ----------------------------------------------------------------------------- the run
@dataclass
class Shown:
    """What the slice figure needs of a method's answer: its atoms (K, 3) A and the central slab
    of its volume (:func:`atomsplat.report.central_slab`, (nx, ny))."""

    positions: np.ndarray
    slab: np.ndarray


def _result_file(work: Path, particle: str, size: str, scheme_name: str, method: str) -> Path:
    return work / "results" / f"{particle}_{size}_{scheme_name}_{method}.npz"


def _load_result(path: Path, settings: dict) -> Optional[tuple]:
    """(row, Shown) stored at ``path`` by a run with the same ``settings``, else None."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        if meta["settings"] != json.loads(json.dumps(settings, default=_plain)):
            return None
        return meta["row"], Shown(stored["positions"], stored["slab"])


def _save_result(path: Path, settings: dict, row: dict, shown: Shown) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"settings": settings, "row": row}, default=_plain)
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez_compressed(partial, meta=np.array(meta), positions=shown.positions, slab=shown.slab)
    partial.replace(path)  # a run killed while writing leaves no half-written result behind


def run_case(
    particle: str, scheme_name: str, preset: Preset, work: Path, figures: Path, log: Callable[[str], None] = print
) -> list:
    """All methods on one particle and scheme; returns result rows and draws the slice figure.

    Each method's row and what the figure shows of it are kept in ``work/results``; a later run
    with the same settings (particle, size, tilts, simulation, method options) reuses them, so an
    interrupted comparison goes on where it stopped.
    """
    from atomsplat.report import central_slab, plot_slices

    scheme = preset.schemes[scheme_name]
    data = simulated_case(particle, scheme, preset, work)
    series = read_tilt_series(data)
    truth = ase.io.read(data / "ground_truth.xyz")
    truth_species = np.array(truth.get_chemical_symbols())
    truth_volume = potential_volume(truth, series.pixel_size, grid_shape(series))
    rows, shown = [], {}
    for method, options in preset.methods.items():
        settings = {
            "particle": particle,
            "size": preset.size,
            "tilt": scheme,
            "pixel_size": preset.pixel_size,
            "probe_sigma": preset.probe_sigma,
            "noise_sigma": preset.noise_sigma,
            "seed": preset.seed,
            "method": method,
            "options": options,
        }
        path = _result_file(work, particle, preset.size, scheme_name, method)
        stored = _load_result(path, settings)
        if stored is not None:
            row, shown[method] = stored
            log(f"[{particle} {scheme_name}] {method}: kept from {path}")
        else:
            log(f"[{particle} {scheme_name}] {method} ...")
            if method == "atomsplat":
                result = run_atomsplat(data, series, options, work)
            else:
                result = {"fbp": run_fbp, "sirt": run_sirt, "inr": run_inr}[method](series, options)
            labelled = result.species is not None and len(set(truth_species)) > 1
            row = method_scores(
                result.positions,
                truth.positions,
                result.species if labelled else None,
                truth_species if labelled else None,
                result.volume,
                truth_volume,
            )
            row.update(
                particle=particle, scheme=scheme_name, tilt=scheme, method=method, seconds=round(result.seconds, 1)
            )
            shown[method] = Shown(result.positions, central_slab(result.volume, series.pixel_size))
            _save_result(path, settings, row, shown[method])
        rows.append(row)
        log(
            f"[{particle} {scheme_name}] {method}: TPR {row['tpr']:.4f} FPR {row['fpr']:.4f} "
            f"RMSE {row['rmse'] if row['rmse'] is None else round(row['rmse'], 3)} SSIM {row['ssim']:.3f} "
            f"({row['seconds']:.0f} s)"
        )
    plot_slices(
        truth,
        central_slab(truth_volume, series.pixel_size),
        shown,
        series.pixel_size,
        figures / f"slices_{particle}_{scheme_name}.png",
        title=f"{particle}, tilts {scheme}",
    )
    return rows


def run_ablation(preset: Preset, work: Path, figures: Path, log: Callable[[str], None] = print) -> list:
    """atomsplat with and without isotropy and merging: Gaussians per atom, TPR/FPR, species separation."""
    from atomsplat.report import plot_weight_histograms

    spec = preset.ablation
    data = simulated_case(spec["particle"], spec["scheme"], preset, work, size=spec.get("size", preset.size))
    series = read_tilt_series(data)
    truth = ase.io.read(data / "ground_truth.xyz")
    truth_species = np.array(truth.get_chemical_symbols())
    options = {"steps": spec.get("steps", 3000)}
    rows, weights_by_method = [], {}
    for method in ("atomsplat", "atomsplat-noiso", "atomsplat-nomerge"):
        extra = {} if method == "atomsplat-nomerge" else {"merge_distance": spec.get("merge_distance", 1.6)}
        log(f"[ablation {spec['particle']}] {method} ...")
        result = run_atomsplat(data, series, {**options, **extra}, work, method=method)
        pred, true, _ = match_atoms(result.positions, truth.positions)
        matched_species = truth_species[true]
        matched_weights = result.extra["weights"][pred]
        weights_by_method[method] = (matched_weights, matched_species)
        row = method_scores(result.positions, truth.positions)
        row.update(
            method=method,
            particle=spec["particle"],
            tilt=spec["scheme"],
            seconds=round(result.seconds, 1),
            gaussians_per_atom=result.extra["gaussians"] / len(truth),
            separability=separability(matched_weights, matched_species) if len(set(matched_species)) > 1 else None,
        )
        rows.append(row)
        log(
            f"[ablation] {method}: {row['gaussians_per_atom']:.2f} Gaussians per atom, TPR {row['tpr']:.4f} "
            f"FPR {row['fpr']:.4f}, separability {row['separability']}"
        )
    plot_weight_histograms(weights_by_method, figures / f"ablation_{spec['particle']}_weights.png")
    return rows


def run_comparison(preset: Preset, output: Path, work: Path, log: Callable[[str], None] = print) -> Dict[str, list]:
    """Run a preset; write ``results.json``, ``results.md`` and figures into ``output``."""
    from atomsplat.report import plot_bars

    figures = output / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "preset": asdict(preset), "rows": [], "ablation": []}
    started = time.perf_counter()
    for particle in preset.particles:
        for scheme_name in preset.schemes:
            results["rows"] += run_case(particle, scheme_name, preset, work, figures, log)
            _write(output, results)
    if results["rows"]:
        plot_bars(results["rows"], figures / "bars.png")
    if preset.ablation:
        results["ablation"] = run_ablation(preset, work, figures, log)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    _write(output, results)
    return results


def _write(output: Path, results: dict) -> None:
    (output / "results.json").write_text(json.dumps(results, indent=1, default=_plain) + "\n")
    (output / "results.md").write_text(results_markdown(results))


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_markdown(results: dict) -> str:
    """The results as markdown: one table per scheme, the mean over particles, the ablation."""
    rows = results["rows"]
    lines = [f"Machine: {results['machine']}.", ""]
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for scheme in schemes:
        picked = [r for r in rows if r["scheme"] == scheme]
        lines += [
            f"### Tilts {picked[0]['tilt']} ({scheme})",
            "",
            "| particle | method | atoms | TPR | FPR | RMSE (A) | species acc. | SSIM | time (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in picked:
            lines.append(
                f"| {r['particle']} | {r['method']} | {r['n_true']} | {_fmt(r['tpr'])} | {_fmt(r['fpr'])} | "
                f"{_fmt(r['rmse'], 3)} | {_fmt(r['species_accuracy'], 3)} | {_fmt(r['ssim'], 3)} | {r['seconds']:.0f} |"
            )
        lines += ["", "Mean over particles:", "", "| method | TPR | FPR | SSIM |", "|---|---|---|---|"]
        for method in methods:
            mine = [r for r in picked if r["method"] == method]
            if mine:
                lines.append(
                    f"| {method} | {np.mean([r['tpr'] for r in mine]):.4f} | {np.mean([r['fpr'] for r in mine]):.4f} | "
                    f"{np.mean([r['ssim'] for r in mine]):.3f} |"
                )
        lines.append("")
    if results.get("ablation"):
        lines += [
            "### Ablation",
            "",
            "| method | Gaussians per atom | TPR | FPR | species separability | time (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["ablation"]:
            lines.append(
                f"| {r['method']} | {r['gaussians_per_atom']:.2f} | {_fmt(r['tpr'])} | {_fmt(r['fpr'])} | "
                f"{_fmt(r['separability'], 2)} | {r['seconds']:.0f} |"
            )
        lines.append("")
    if "total_seconds" in results:
        lines.append(f"Total wall time {results['total_seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"
