"""Rebuild the tilt series bundled with atomsplat (atomsplat/assets/demo).

A 201-atom Pt-Ni octahedron (FCC, Pt lattice, 30 % of sites Ni at random, seed 0), simulated
with atomsplat-simulate at the paper's settings: 0.25 A pixels, 0.5 A probe blur, Gaussian
noise of sigma 50 (abTEM units, V A), tilts -90:90:3 (61 projections).

    python scripts/make_demo_data.py [--output atomsplat/assets/demo]
"""

import argparse
import tempfile
from pathlib import Path

import ase.io
import numpy as np
from ase.cluster import Octahedron

from atomsplat.cli.simulate import main as simulate


def demo_structure(seed: int = 0):
    atoms = Octahedron("Pt", 7, cutoff=2)
    rng = np.random.default_rng(seed)
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.random(len(atoms)) < 0.3] = "Ni"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.center(vacuum=0.0)
    atoms.cell = None
    return atoms


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "atomsplat" / "assets" / "demo"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        structure = Path(tmp) / "PtNi_octahedron.xyz"
        ase.io.write(structure, demo_structure())
        raise SystemExit(
            simulate(
                [
                    str(structure),
                    "--tilt=-90:90:3",
                    "--output",
                    args.output,
                    "--pixel-size",
                    "0.25",
                    "--probe-sigma",
                    "0.5",
                    "--noise-sigma",
                    "50",
                    "--seed",
                    "0",
                    "--overwrite",
                ]
            )
        )
