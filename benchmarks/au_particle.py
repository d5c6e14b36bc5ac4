"""The paper's headline benchmark: the 6,679-atom Au particle, all angles and missing wedge; and
the same run on any particle of the registry, e.g. the 100,000-atom FCC Au sphere.

    python benchmarks/au_particle.py [--schemes full wedge] [--steps 3000] [--work /tmp/atomsplat-au]
    python benchmarks/au_particle.py --particle au-sphere --size large --schemes full

Simulates each tilt series with atomsplat-simulate (0.25 A pixels, 0.5 A probe blur, Gaussian
noise of sigma 50 in abTEM units, seed 0), trains atomsplat with nerfstudio's trainer on the CPU
(or CUDA if present), exports the atoms and matches them to the truth within 0.75 A. Results go
to docs/benchmarks/<name>_<scheme>_<steps>steps.json and .png (name: "au" for the paper's
particle, else particle-size); wall times and the peak resident memory of this process
(simulation and training, ``ru_maxrss``) are those of this machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import ase.io

from atomsplat.analysis.matching import evaluate
from atomsplat.benchmark.run import machine
from atomsplat.cli.simulate import main as simulate
from atomsplat.export import atoms_from_model, load_model
from atomsplat.report import plot_report
from atomsplat.sim.structures import AU_XYZ, PARTICLES, build_particle
from atomsplat.training import train

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = {"full": "-90:90:1", "wedge": "-70:70:3"}


def structure_file(particle: str, size: str, work: Path, path: Path) -> tuple[str, Path]:
    """The benchmark's name and the XYZ file of its structure (the Au file itself, or the
    registry particle written to ``work``)."""
    if particle == "au" and size == "full":
        return "au", path
    name = f"{particle}-{size}"
    xyz = work / f"{name}.xyz"
    if not xyz.is_file():
        work.mkdir(parents=True, exist_ok=True)
        ase.io.write(xyz, build_particle(particle, size))
    return name, xyz


def run(name: str, structure: Path, scheme: str, steps: int, work: Path) -> dict:
    data = work / f"{name}_{scheme}"
    start = time.perf_counter()
    if not (data / "projections.tif").is_file():
        simulate(
            [str(structure), f"--tilt={SCHEMES[scheme]}", "--output", str(data), "--noise-sigma", "50", "--seed", "0"]
        )
    simulation = time.perf_counter() - start
    start = time.perf_counter()
    config = train(data, steps, work / "runs")
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    model, _ = load_model(config)
    atoms = atoms_from_model(model)
    truth = ase.io.read(data / "ground_truth.xyz")
    report = evaluate(atoms.positions, truth.positions)
    print(
        f"\n{name}, {len(truth)} atoms, tilts {SCHEMES[scheme]}, {steps} steps, {seconds:.0f} s of training, "
        f"peak memory {peak_gib:.1f} GiB\n{report.summary()}"
    )
    out = ROOT / "docs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    plot_report(model, atoms, data / "ground_truth.xyz", out / f"{name}_{scheme}_{steps}steps.png")
    result = {
        "particle": name,
        "atoms": len(truth),
        "scheme": SCHEMES[scheme],
        "steps": steps,
        "simulation_seconds": round(simulation, 1),
        "train_seconds": round(seconds, 1),
        "peak_memory_gib": round(peak_gib, 2),
        "machine": machine(),
        **report.as_dict(),
    }
    (out / f"{name}_{scheme}_{steps}steps.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", nargs="+", choices=sorted(SCHEMES), default=["full", "wedge"])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/atomsplat-au"))
    parser.add_argument("--particle", choices=sorted(PARTICLES), default="au")
    parser.add_argument("--size", default="full", help="a size of the particle in the registry (default: full)")
    parser.add_argument("--structure", type=Path, default=AU_XYZ, help="the Au particle file (for --particle au)")
    args = parser.parse_args()
    bench, xyz = structure_file(args.particle, args.size, args.work, args.structure)
    for scheme in args.schemes:
        run(bench, xyz, scheme, args.steps, args.work)
