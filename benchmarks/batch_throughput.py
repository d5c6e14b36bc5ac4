"""Cases per hour of ``atomsplat-batch``: the serial loop beside a local Ray with 1 and 2 workers.

    python benchmarks/batch_throughput.py [--cases 4] [--steps 800] [--tilt=-70:70:3]

The cases are the quick particles (pd, fept, hea, au, then again with other seeds), simulated at
``--tilt`` (0.25 A pixels, 0.5 A probe blur, Gaussian noise of sigma 50), each trained ``--steps``
steps as the quick comparison preset trains atomsplat. Three engines run the same cases, each
into a fresh output directory (nothing kept):

- serial: one after another in this process, with all the machine's cores as threads;
- Ray, 1 worker: Ray started here, one case at a time with all the cores (``--workers 1``);
- Ray, 2 workers: two cases at once, the cores shared between them (``--workers 2``).

For each: the wall time of the whole batch (Ray's start-up included), cases per hour, and the mean
training time per case (``train``'s wall time inside the job). The load average before and after
is recorded: on a shared machine the numbers move with it. Writes
docs/benchmarks/batch_throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from atomsplat.batch.datasets import run_batch
from atomsplat.batch.engine import EngineOptions
from atomsplat.benchmark.run import machine
from atomsplat.data.formats import write_tilt_series
from atomsplat.data.series import parse_tilt_scheme
from atomsplat.sim.simulate import simulate_tilt_series
from atomsplat.sim.structures import build_particle

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
PARTICLES = ("pd", "fept", "hea", "au")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--tilt", default="-70:70:3")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="batch_throughput_"))
    datasets = []
    for k in range(args.cases):
        particle, seed = PARTICLES[k % len(PARTICLES)], k // len(PARTICLES)
        atoms = build_particle(particle, "quick", seed)
        series = simulate_tilt_series(atoms, parse_tilt_scheme(args.tilt), noise_sigma=50.0, seed=seed, progress=False)
        datasets.append(
            write_tilt_series(work / "data" / f"{particle}{seed}", series, ground_truth=atoms, overwrite=True)
        )
    cores = os.cpu_count() or 1
    engines = {
        "serial": EngineOptions("serial"),
        "Ray, 1 worker": EngineOptions("ray", workers=1, cpus_per_job=cores),
        "Ray, 2 workers": EngineOptions("ray", workers=2, cpus_per_job=max(1, cores // 2)),
    }
    rows = []
    for name, engine in engines.items():
        load_before = os.getloadavg()
        start = time.perf_counter()
        results, failures = run_batch(datasets, work / name.replace(" ", "_").replace(",", ""), args.steps, {}, engine)
        wall = time.perf_counter() - start
        if failures:
            raise SystemExit(f"{name}: {[f.summary() for f in failures]}")
        rows.append(
            {
                "engine": name,
                "cases": len(results),
                "wall_seconds": round(wall, 1),
                "cases_per_hour": round(3600.0 * len(results) / wall, 1),
                "mean_training_seconds": round(float(np.mean([r.seconds for r in results])), 1),
                "mean_tpr": round(float(np.mean([r.tpr for r in results])), 4),
                "load_before": load_before,
                "load_after": os.getloadavg(),
            }
        )
        print(rows[-1], flush=True)
    result = {"machine": machine(), "cores": cores, "steps": args.steps, "tilt": args.tilt, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "batch_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n| engine | cases | wall (s) | cases per hour | training per case (s) | load average before, after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['cases']} | {r['wall_seconds']:.0f} | {r['cases_per_hour']:.1f} | "
            f"{r['mean_training_seconds']:.0f} | {r['load_before'][0]:.1f}, {r['load_after'][0]:.1f} |"
        )
    print(f"\n{result['machine']}")


if __name__ == "__main__":
    main()
