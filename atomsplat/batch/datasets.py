"""atomsplat on every dataset of a list, with one configuration: the jobs of ``atomsplat-batch``.

Each dataset (a directory, MRC stack or transforms.json layout that :func:`atomsplat.data.formats.read_tilt_series`
reads) gets a directory ``OUTPUT/<name>`` (``name`` from the dataset's file name, made unique)
holding the training run (``run/``), the atoms (``atoms.xyz``: extended XYZ, A, sample frame, with
per-atom weight, sigma and, when training finished, uncertainty; ``atoms_corrections.json`` when
shifts or a background were learned), and ``finished.json``, written last: the settings it was
made with and its summary (:class:`Reconstructed`). A dataset whose ``finished.json`` holds the
same settings is not trained again, so an interrupted batch goes on where it stopped. The
settings are the dataset's path and the size and time of its projection file, the method, steps,
model options, and the digest of every file an option names (a warm start's atoms).

:func:`reconstruct` is the job (picklable; :mod:`atomsplat.batch.engine` runs it in this process
or as a Ray task), :func:`run_batch` the whole batch, ``batch.json`` and ``batch.md`` its summary.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from atomsplat.batch.engine import EngineOptions, Failure, Job, run_jobs

Log = Callable[[str], None]
FINISHED = "finished.json"
ATOMS = "atoms.xyz"


class BatchError(ValueError):
    """Input the batch cannot use (the message names the file or option and the problem)."""


@dataclass(frozen=True)
class Reconstruction:
    """atomsplat on one dataset.

    Attributes:
        data: the dataset (directory or stack file), an absolute path.
        directory: where its run, atoms and ``finished.json`` go.
        method: "atomsplat" or one of its ablations.
        steps: training steps.
        options: model options (fields of the model config; paths as strings).
        pixel_size: A, overriding the dataset's, or None.
    """

    data: Path
    directory: Path
    method: str = "atomsplat"
    steps: int = 3000
    options: dict = field(default_factory=dict)
    pixel_size: Optional[float] = None

    def settings(self) -> dict:
        """What the result depends on (see the module docstring), JSON-ready."""
        source = _source_file(self.data)
        stat = source.stat()
        inputs = {
            key: _file_digest(Path(value))
            for key, value in self.options.items()
            if isinstance(value, (str, Path)) and Path(value).is_file()
        }
        return json.loads(
            json.dumps(
                {
                    "data": str(self.data),
                    "source": {"file": str(source), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
                    "method": self.method,
                    "steps": self.steps,
                    "options": self.options,
                    "pixel_size": self.pixel_size,
                    "inputs": inputs,
                },
                default=str,
            )
        )


@dataclass
class Reconstructed:
    """A finished dataset.

    Attributes:
        name: its directory's name under the output.
        data: the dataset.
        atoms: atoms found.
        seconds: training wall time.
        atoms_file: the extended XYZ of its atoms.
        tpr, fpr, rmse, species_accuracy: against the dataset's ground_truth.xyz (matching within
            0.75 A, :func:`atomsplat.analysis.matching.evaluate`), None without one.
    """

    name: str
    data: str
    atoms: int
    seconds: float
    atoms_file: str
    tpr: Optional[float] = None
    fpr: Optional[float] = None
    rmse: Optional[float] = None
    species_accuracy: Optional[float] = None

    def summary(self) -> str:
        """One line for the progress log."""
        scores = "" if self.tpr is None else f", TPR {self.tpr:.4f} FPR {self.fpr:.4f}"
        return f"{self.name}: {self.atoms} atoms{scores} ({self.seconds:.0f} s)"


def _source_file(data: Path) -> Path:
    """The file whose size and time stand for the dataset's content."""
    data = Path(data)
    if data.is_dir():
        for name in ("projections.tif", "transforms.json"):
            if (data / name).is_file():
                return data / name
    return data


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def reconstruct(task: Reconstruction) -> Reconstructed:
    """Train ``task.method`` on ``task.data``, write the atoms, score them against the dataset's
    ground truth if it has one, and write ``finished.json`` last. The job of a batch."""
    import ase.io

    from atomsplat.analysis.matching import evaluate
    from atomsplat.data.formats import ground_truth_path
    from atomsplat.export import atoms_from_model, corrections_from_model, load_model
    from atomsplat.training import train

    directory = Path(task.directory)
    (directory / FINISHED).unlink(missing_ok=True)
    start = time.perf_counter()
    config = train(
        task.data, task.steps, directory / "run", method=task.method, pixel_size=task.pixel_size, **task.options
    )
    seconds = time.perf_counter() - start
    model, _ = load_model(config)
    atoms = atoms_from_model(model)
    ase.io.write(directory / ATOMS, atoms, format="extxyz")
    corrections = corrections_from_model(model)
    if corrections:
        (directory / "atoms_corrections.json").write_text(json.dumps(corrections, indent=1) + "\n")
    result = Reconstructed(directory.name, str(task.data), len(atoms), round(seconds, 1), str(directory / ATOMS))
    truth_path = ground_truth_path(task.data)
    if truth_path is not None:
        truth = ase.io.read(truth_path)
        symbols = atoms.get_chemical_symbols()
        labelled = set(symbols) != {"X"} and len(set(truth.get_chemical_symbols())) > 1
        report = evaluate(
            atoms.positions,
            truth.positions,
            symbols if labelled else None,
            truth.get_chemical_symbols() if labelled else None,
        )
        result.tpr, result.fpr, result.rmse = report.tpr, report.fpr, report.rmse
        result.species_accuracy = report.species_accuracy
    (directory / FINISHED).write_text(json.dumps({"settings": task.settings(), "result": asdict(result)}, indent=1))
    return result


def kept(task: Reconstruction) -> Optional[Reconstructed]:
    """The result of ``task`` from an earlier run with the same settings, or None."""
    path = Path(task.directory) / FINISHED
    try:
        stored = json.loads(path.read_text())
        if stored["settings"] != task.settings() or not (Path(task.directory) / ATOMS).is_file():
            return None
        return Reconstructed(**stored["result"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- the datasets
def _natural(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expand(patterns: Sequence[str]) -> List[Path]:
    """The datasets of ``patterns`` (paths, or glob patterns such as ``data/t*``), in the order
    given; a pattern's matches in natural order (t2 before t10). Absolute paths, each once.

    Raises:
        BatchError: a pattern that matches nothing, or none given.
    """
    found: List[Path] = []
    for pattern in patterns:
        matches = (
            [Path(pattern)]
            if Path(pattern).exists()
            else sorted(map(Path, glob.glob(pattern)), key=lambda p: _natural(str(p)))
        )
        if not matches:
            raise BatchError(f"{pattern}: no such dataset")
        for match in matches:
            match = match.resolve()
            if match not in found:
                found.append(match)
    if not found:
        raise BatchError("no datasets given")
    return found


def names(datasets: Sequence[Path]) -> List[str]:
    """A directory name per dataset: its file name without suffix, with a digest of its path
    where two would share one."""
    stems = [Path(d).stem if Path(d).is_file() else Path(d).name for d in datasets]
    return [
        stem if stems.count(stem) == 1 else f"{stem}_{hashlib.sha256(str(d).encode()).hexdigest()[:6]}"
        for stem, d in zip(stems, datasets)
    ]


def check_options(method: str, options: dict, where: str) -> None:
    """Raise :class:`BatchError` naming ``where`` for a method or model option that does not exist."""
    from atomsplat import method as methods

    spec = getattr(methods, method.replace("-", "_"), None)
    if method not in ("atomsplat", "atomsplat-noiso", "atomsplat-nomerge") or spec is None:
        raise BatchError(f"--method: {method!r} is not one of atomsplat, atomsplat-noiso, atomsplat-nomerge")
    model = spec.config.pipeline.model
    unknown = sorted(key for key in options if not hasattr(model, key))
    if unknown:
        raise BatchError(f"{where}: unknown model options {unknown}")


def read_options(path: Optional[Path]) -> dict:
    """The model options of a JSON file ({"merge_distance": 1.2, ...}); {} for None."""
    if path is None:
        return {}
    try:
        options = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BatchError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BatchError(f"{path}: not a JSON file of model options: {err}") from None
    if not isinstance(options, dict):
        raise BatchError(f"{path}: not a JSON object of model options")
    return options


def checked_datasets(datasets: Sequence[Path], pixel_size: Optional[float]) -> Tuple[List[Path], List[Failure]]:
    """The datasets that read as tilt series, and a failure for each that does not (its message
    names the file and the problem)."""
    from atomsplat.data.formats import read_tilt_series
    from atomsplat.data.series import TiltSeriesError

    good, bad = [], []
    for data in datasets:
        try:
            read_tilt_series(data, pixel_size=pixel_size)
        except (TiltSeriesError, FileNotFoundError, ValueError) as err:
            bad.append(Failure(str(data), " ".join(str(err).split()), ""))
            continue
        good.append(data)
    return good, bad


# ----------------------------------------------------------------------------- the batch
def run_batch(
    datasets: Sequence[Path],
    output: Path,
    steps: int,
    options: dict,
    engine: EngineOptions,
    method: str = "atomsplat",
    pixel_size: Optional[float] = None,
    log: Log = print,
) -> Tuple[List[Reconstructed], List[Failure]]:
    """atomsplat with ``options`` on every dataset, on ``engine``; results kept in ``output``
    (module docstring), ``batch.json`` and ``batch.md`` rewritten as each finishes. Returns the
    results in the order of ``datasets`` and the failures (a dataset that does not read, a job
    that raised)."""
    output = Path(output).resolve()
    good, failures = checked_datasets(datasets, pixel_size)
    for failure in failures:
        log(f"skipped {failure.summary()}")
    tasks = [
        Reconstruction(data, output / name, method, steps, options, pixel_size) for data, name in zip(good, names(good))
    ]
    results: Dict[str, Reconstructed] = {}
    jobs = []
    for task in tasks:
        previous = kept(task)
        if previous is not None:
            log(f"{previous.summary()} (kept from {task.directory / FINISHED})")
            results[task.directory.name] = previous
        else:
            jobs.append(Job(task.directory.name, reconstruct, (task,), uses_gpu=True, log=task.directory / "train.log"))

    def done(job: Job, result: Reconstructed) -> None:
        results[job.key] = result
        log(result.summary())
        write_summary(output, [results[t.directory.name] for t in tasks if t.directory.name in results], failures)

    failures = failures + run_jobs(jobs, engine, done, log)
    ordered = [results[t.directory.name] for t in tasks if t.directory.name in results]
    write_summary(output, ordered, failures)
    return ordered, failures


def write_summary(output: Path, results: List[Reconstructed], failures: List[Failure]) -> None:
    """``batch.json`` (results and failures) and ``batch.md`` (a table) in ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    raw = {"results": [asdict(r) for r in results], "failures": [{"key": f.key, "error": f.error} for f in failures]}
    (output / "batch.json").write_text(json.dumps(raw, indent=1) + "\n")

    def fmt(value, digits=4):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = ["| dataset | atoms | TPR | FPR | RMSE (A) | species acc. | time (s) |", "|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r.name} | {r.atoms} | {fmt(r.tpr)} | {fmt(r.fpr)} | {fmt(r.rmse, 3)} | {fmt(r.species_accuracy, 3)} | "
        f"{r.seconds:.0f} |"
        for r in results
    ]
    if failures:
        lines += ["", "Failed:", ""] + [f"- {f.summary()}" for f in failures]
    (output / "batch.md").write_text("\n".join(lines) + "\n")
