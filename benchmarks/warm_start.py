"""Warm start against cold start on the second frame of a simulated time series.

    python benchmarks/warm_start.py [--particle pd] [--tilt=-70:70:5] [--cold 800 400 200] [--warm 400 200 100]

Simulates two frames of a quick particle (:func:`atomsplat.sim.timeseries.simulate_time_series`:
3 atoms displaced by 0.8 A, 2 removed, 2 added, a stage drift of about (0.7, -0.5, 0.4) A;
0.25 A pixels, 0.5 A probe blur, Gaussian noise of sigma 50, seed 0), reconstructs frame 0 with
``--cold[0]`` steps, then frame 1 cold (``init_support`` "peaks", the default) with each of
``--cold`` steps and warm (from frame 0's atoms moved by the drift estimated from the projections,
births at every density pass, as ``atomsplat-batch --time-series`` does:
:func:`atomsplat.batch.timeseries.warm_start`) with each of ``--warm`` steps. Prints a markdown
table of TPR, FPR, RMSE against frame 1's truth and the training time (wall time of
``atomsplat.training.train``, which includes the final refinement); writes it as JSON to
docs/benchmarks/warm_start_<particle>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np

from atomsplat.analysis.matching import evaluate
from atomsplat.batch.timeseries import warm_start
from atomsplat.benchmark.run import machine
from atomsplat.data.formats import write_tilt_series
from atomsplat.data.series import parse_tilt_scheme
from atomsplat.export import atoms_from_model, load_model
from atomsplat.sim.structures import build_particle
from atomsplat.sim.timeseries import simulate_time_series
from atomsplat.training import train

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def run(data: Path, steps: int, work: Path, **options):
    """Train ``steps`` steps on ``data``, export and score the atoms against its ground truth.

    Returns:
        ``(row, atoms)``: the row (steps, TPR, FPR, RMSE in A, training seconds) and the ase.Atoms found.
    """
    start = time.perf_counter()
    config = train(data, steps, work, **options)
    seconds = time.perf_counter() - start
    atoms = atoms_from_model(load_model(config)[0])
    truth = ase.io.read(data / "ground_truth.xyz")
    report = evaluate(atoms.positions, truth.positions)
    return {
        "steps": steps,
        "tpr": report.tpr,
        "fpr": report.fpr,
        "rmse": report.rmse,
        "seconds": round(seconds, 1),
    }, atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particle", default="pd")
    parser.add_argument("--tilt", default="-70:70:5")
    parser.add_argument("--cold", type=int, nargs="+", default=[800, 400, 200])
    parser.add_argument("--warm", type=int, nargs="+", default=[400, 200, 100])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="warm_start_"))
    frames = simulate_time_series(
        build_particle(args.particle, "quick", 0), parse_tilt_scheme(args.tilt), frames=2, seed=0, noise_sigma=50.0
    )
    paths = [
        write_tilt_series(work / f"t{t}", series, ground_truth=truth, overwrite=True)
        for t, (series, truth, _) in enumerate(frames)
    ]
    first, previous = run(paths[0], args.cold[0], work / "runs")
    print(f"frame 0, cold {args.cold[0]} steps: {first}")
    warm_options, drift, _ = warm_start(previous, frames[1][0], work / "start.xyz", {})
    rows = []
    for steps in args.cold:
        row, _ = run(paths[1], steps, work / "runs")
        rows.append({"start": "cold", **row})
        print(rows[-1])
    for steps in args.warm:
        row, _ = run(paths[1], steps, work / "runs", **warm_options)
        rows.append({"start": "warm", **row})
        print(rows[-1])
    result = {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "particle": args.particle,
        "tilt": args.tilt,
        "atoms": len(frames[1][1]),
        "drift_estimate": drift.tolist(),
        "true_drift": frames[1][2].drift.tolist(),
        "frame0": first,
        "frame1": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"warm_start_{args.particle}.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n| start | steps | TPR | FPR | RMSE (A) | training (s) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['start']} | {r['steps']} | {r['tpr']:.4f} | {r['fpr']:.4f} | {r['rmse']:.3f} | {r['seconds']:.0f} |"
        )
    print(f"\n{result['machine']}, load average {np.round(result['load_average'], 1).tolist()}")


if __name__ == "__main__":
    main()
