"""A time series: an ordered list of tilt series of one particle, its atoms followed across time.

Frame 0 is reconstructed as any dataset (:func:`atomsplat.batch.datasets.reconstruct`, ``steps``).
Every later frame starts from the atoms of the frame before (a warm start: model option
``init_support="atoms"``, ``warm_steps`` steps), moved by the drift of the sample between the two
series, estimated from the new projections (:func:`atomsplat.analysis.tracking.drift_from_projections`),
and looks for new atoms at every density pass (``birth_every`` = ``refine_every``, unless the
options set ``birth_every``: with the default 300 a short warm start would have one birth pass or
none, and atoms that appeared would be missed);
once it is reconstructed, the drift is refined from the atoms matched between the two frames
(:func:`atomsplat.analysis.tracking.drift_from_atoms`). With the drift removed, atoms are matched
one to one within ``max_distance`` into trajectories, and the changes are listed
(:func:`atomsplat.analysis.tracking.link_frames`).

Frames run one after another (each needs the one before) as jobs of :mod:`atomsplat.batch.engine`:
in this process, or as Ray tasks (on a GPU node of a cluster, say). Everything goes to ``OUTPUT``:

- ``frames/<t>_<name>/``: each frame's run, ``atoms.xyz`` (its own frame), ``start.xyz`` (the
  atoms it started from) and ``finished.json`` (a frame finished with the same settings is kept);
- ``trajectory.xyz``: extended XYZ, one frame per time (``ase.io.read(path, ":")`` reads them all;
  OVITO plays them), positions in the frame of the first series (drift removed), per-atom "id"
  (the trajectory), weight, sigma, uncertainty (when training finished), "displacement" (A, since
  the frame before; 0 for an atom that appeared) and "significance" (that displacement in
  standard deviations; 0 where there is none); per frame "time", "drift" (A, the sample's
  translation since the first series) and "dataset";
- ``events.csv``: the atoms that appeared, vanished or moved more than ``significance`` standard
  deviations, one a line;
- ``timeseries.json``, ``timeseries.md``: per frame the atoms, steps, time, both drift estimates
  and the counts of changes (and TPR/FPR against a ground truth where the dataset has one).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from atomsplat.analysis.tracking import (
    MAX_DISTANCE,
    SIGNIFICANCE,
    Trajectories,
    drift_from_atoms,
    drift_from_projections,
    link_frames,
)
from atomsplat.batch.datasets import ATOMS, Reconstructed, Reconstruction, checked_datasets, kept, names, reconstruct
from atomsplat.batch.engine import EngineOptions, Failure, Job, run_jobs, session
from atomsplat.model.strategy import DensityOptions

Log = Callable[[str], None]
START = "start.xyz"


@dataclass
class Frame:
    """One tilt series of the time series, reconstructed.

    Attributes:
        time: its index (0 first).
        result: its reconstruction (:class:`atomsplat.batch.datasets.Reconstructed`).
        steps: the training steps it took (cold for frame 0, warm after).
        drift_estimate: (3,) A, the sample's translation since the frame before, from the
            projections (zero for frame 0).
        drift: (3,) A, the same refined from the matched atoms.
        drift_error: (3,) A, its standard error.
        drift_atoms: how many matched atoms the refined drift rests on.
        total_drift: (3,) A, the translation since frame 0.
    """

    time: int
    result: Reconstructed
    steps: int
    drift_estimate: List[float]
    drift: List[float]
    drift_error: List[float]
    drift_atoms: int
    total_drift: List[float]


def warm_start(previous, series, start: Path, options: dict):
    """The model options that start a reconstruction of ``series`` from the atoms ``previous``
    (ase.Atoms with "sigma" and "weight", the frame before): those atoms moved by the drift
    estimated from the projections (:func:`atomsplat.analysis.tracking.drift_from_projections`)
    are written to ``start`` (extended XYZ), and ``options`` gain ``init_support="atoms"``,
    ``init_atoms`` and, unless they set it, ``birth_every`` = ``refine_every`` (module docstring).

    Returns:
        ``(options, drift, residuals)``: the new options, the drift (3,) A and each view's residual
        of the drift's fit, A (NaN for the views left out).
    """
    import ase.io

    drift, residuals = drift_from_projections(
        previous.positions,
        previous.arrays["sigma"],
        previous.arrays["weight"],
        series.projections,
        series.tilt_angles,
        series.pixel_size,
        series.tilt_axis_angle,
        series.shifts,
    )
    moved = previous.copy()
    moved.positions += drift
    ase.io.write(start, moved, format="extxyz")
    warm = dict(options, init_support="atoms", init_atoms=str(start))
    warm.setdefault("birth_every", options.get("refine_every", DensityOptions.refine_every))
    return warm, drift, residuals


def run_time_series(
    datasets: Sequence[Path],
    output: Path,
    steps: int,
    warm_steps: int,
    options: dict,
    engine: EngineOptions,
    method: str = "atomsplat",
    pixel_size: Optional[float] = None,
    max_distance: float = MAX_DISTANCE,
    significance: float = SIGNIFICANCE,
    log: Log = print,
) -> Tuple[List[Frame], Optional[Trajectories], List[Failure]]:
    """Reconstruct ``datasets`` in order, each later one warm-started from the one before, and
    follow the atoms (module docstring). A frame that fails stops the series there (the later
    ones need it); the frames before are kept and written.

    Returns:
        the frames reconstructed, their trajectories (None with fewer than one frame), and the
        failures.
    """
    import ase.io

    from atomsplat.data.formats import read_tilt_series

    output = Path(output).resolve()
    good, failures = checked_datasets(datasets, pixel_size)
    if failures:  # a time series with a hole in it would link frames that are not consecutive
        for failure in failures:
            log(f"time series stopped: {failure.summary()}")
        return [], None, failures
    frames: List[Frame] = []
    atoms_of = []
    total = np.zeros(3)
    with session(engine):
        for t, (data, name) in enumerate(zip(good, names(good))):
            directory = output / "frames" / f"{t:03d}_{name}"
            directory.mkdir(parents=True, exist_ok=True)
            estimate = np.zeros(3)
            frame_options, frame_steps = dict(options), steps
            if t > 0:
                series = read_tilt_series(data, pixel_size=pixel_size)
                frame_options, estimate, residuals = warm_start(atoms_of[-1], series, directory / START, options)
                log(
                    f"[{t}] {name}: drift from the projections {np.round(estimate, 3).tolist()} A "
                    f"({np.count_nonzero(np.isfinite(residuals))} of {len(residuals)} views agree, median residual "
                    f"{np.nanmedian(residuals):.3f} A)"
                )
                frame_steps = warm_steps
            task = Reconstruction(data, directory, method, frame_steps, frame_options, pixel_size)
            result = kept(task)
            if result is not None:
                log(f"[{t}] {result.summary()} (kept from {directory})")
            else:
                got = []
                job = Job(f"[{t}] {name}", reconstruct, (task,), uses_gpu=True, log=directory / "train.log")
                failed = run_jobs([job], engine, lambda job, value: got.append(value), log)
                if failed:
                    failures += failed
                    log(f"time series stopped at frame {t}: {failed[0].summary()}")
                    break
                result = got[0]
                log(f"[{t}] {result.summary()}")
            atoms = ase.io.read(directory / ATOMS, format="extxyz")
            drift, error, used = np.zeros(3), np.zeros(3), len(atoms)
            if t > 0:
                drift, error, used = drift_from_atoms(atoms_of[-1].positions, atoms.positions, estimate, max_distance)
                log(
                    f"[{t}] drift refined from {used} matched atoms: {np.round(drift, 3).tolist()} A "
                    f"(+- {np.round(error, 3).tolist()})"
                )
            total = total + drift
            atoms_of.append(atoms)
            frames.append(
                Frame(
                    t,
                    result,
                    frame_steps,
                    estimate.tolist(),
                    drift.tolist(),
                    error.tolist(),
                    used,
                    total.tolist(),
                )
            )
    if not frames:
        return frames, None, failures
    trajectories = link_frames(
        [a.positions - f.total_drift for a, f in zip(atoms_of, frames)],
        [a.arrays.get("uncertainty") for a in atoms_of],
        [np.asarray(f.drift_error) for f in frames],
        max_distance,
        significance,
    )
    write_time_series(output, frames, atoms_of, trajectories)
    return frames, trajectories, failures


def write_time_series(output: Path, frames: List[Frame], atoms_of: list, trajectories: Trajectories) -> None:
    """``trajectory.xyz``, ``events.csv``, ``timeseries.json`` and ``timeseries.md`` (module docstring)."""
    import ase.io

    moved = {(e.time, e.track): e for e in trajectories.events if e.kind == "moved"}
    snapshots = []
    for frame, atoms, ids, score in zip(frames, atoms_of, trajectories.tracks, trajectories.significance):
        snapshot = atoms.copy()
        snapshot.positions -= np.asarray(frame.total_drift)
        snapshot.set_array("id", ids.astype(int))
        displacement = np.zeros((len(atoms), 3))
        previous = (
            {int(i): p for i, p in zip(trajectories.tracks[frame.time - 1], snapshots[-1].positions)}
            if frame.time
            else {}
        )
        for k, track in enumerate(ids):
            if int(track) in previous:
                displacement[k] = snapshot.positions[k] - previous[int(track)]
        snapshot.set_array("displacement", displacement)
        snapshot.set_array("significance", np.nan_to_num(score, nan=0.0))
        snapshot.info = {"time": frame.time, "drift": np.asarray(frame.total_drift), "dataset": frame.result.data}
        snapshots.append(snapshot)
    ase.io.write(output / "trajectory.xyz", snapshots, format="extxyz")

    data = {f.time: f.result.data for f in frames}
    with open(output / "events.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["time", "dataset", "event", "id", "x", "y", "z", "dx", "dy", "dz", "distance", "significance"])
        for e in trajectories.events:
            d = e.displacement if e.displacement is not None else [None] * 3
            writer.writerow(
                [e.time, data[e.time], e.kind, e.track, *(f"{v:.4f}" for v in e.position)]
                + ["" if v is None else f"{v:.4f}" for v in d]
                + [
                    "" if e.distance is None else f"{e.distance:.4f}",
                    "" if e.significance is None else f"{e.significance:.1f}",
                ]
            )

    counts = []
    for frame in frames:
        mine = [e.kind for e in trajectories.events if e.time == frame.time]
        counts.append({kind: mine.count(kind) for kind in ("appeared", "vanished", "moved")})
    raw = {"frames": [{**asdict(f), **c} for f, c in zip(frames, counts)], "moved": len(moved)}
    (output / "timeseries.json").write_text(json.dumps(raw, indent=1) + "\n")

    def vec(v):
        return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"

    lines = [
        "| time | dataset | atoms | steps | time (s) | drift from projections (A) | drift from atoms (A) | "
        "appeared | vanished | moved | TPR | FPR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for frame, c in zip(frames, counts):
        r = frame.result
        scores = "| n/a | n/a |" if r.tpr is None else f"| {r.tpr:.4f} | {r.fpr:.4f} |"
        lines.append(
            f"| {frame.time} | {r.name} | {r.atoms} | {frame.steps} | {r.seconds:.0f} | {vec(frame.drift_estimate)} | "
            f"{vec(frame.drift)} | {c['appeared']} | {c['vanished']} | {c['moved']} {scores}"
        )
    lines += [
        "",
        "| time | event | id | x | y | z | distance (A) | significance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in trajectories.events:
        distance = "" if e.distance is None else f"{e.distance:.3f}"
        z = "" if e.significance is None else f"{e.significance:.1f}"
        x, y, z_ = (f"{v:.2f}" for v in e.position)
        lines.append(f"| {e.time} | {e.kind} | {e.track} | {x} | {y} | {z_} | {distance} | {z} |")
    (output / "timeseries.md").write_text("\n".join(lines) + "\n")
