"""``atomsplat-demo``: train on a tilt series (default: the bundled one), export, evaluate, plot.

    atomsplat-demo [--data DIR | --data STACK.mrc] [--pixel-size A] [--steps 2000] [--output-dir outputs]

The same as ``ns-train atomsplat --data DIR``, then ``atomsplat-export`` and ``atomsplat-eval``,
in one command; it also draws ``report.png`` beside the run's config.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import tyro
from tyro.conf import arg

from atomsplat.analysis.matching import PAPER_MAX_DISTANCE
from atomsplat.cli import TYRO_CONFIG, fail

PROG = "atomsplat-demo"


@dataclass
class Demo:
    """Train atomsplat on a tilt series (default: the bundled Pt-Ni particle), then export the atoms, evaluate
    them against the dataset's ground_truth.xyz if it has one and draw report.png: ns-train atomsplat,
    atomsplat-export and atomsplat-eval in one command."""

    data: Annotated[Optional[Path], arg(metavar="PATH", help_behavior_hint="(default: bundled Pt-Ni particle)")] = None
    """dataset directory (projections.tif or the paper's transforms.json) or MRC stack"""
    pixel_size: Annotated[Optional[float], arg(metavar="A", help_behavior_hint="")] = None
    """detector pixel size in A, overriding metadata.json and the MRC header; needed where neither gives it"""
    steps: int = 2000
    """training steps"""
    output_dir: Annotated[Path, arg(metavar="DIR")] = Path("outputs")
    """where runs are written"""
    max_distance: Annotated[float, arg(metavar="A")] = PAPER_MAX_DISTANCE
    """matching distance for evaluation, A"""

    def main(self) -> int:
        """Train, export, evaluate and plot; bad input stops with a one-line error (exit status 2)."""
        import ase.io

        from atomsplat.analysis.matching import evaluate
        from atomsplat.data.dataparser import bundled_demo_path
        from atomsplat.data.formats import ground_truth_path, read_tilt_series
        from atomsplat.data.series import TiltSeriesError
        from atomsplat.export import atoms_from_model, load_model
        from atomsplat.report import plot_report
        from atomsplat.training import train

        data = bundled_demo_path() if self.data is None else self.data
        try:
            read_tilt_series(data, pixel_size=self.pixel_size)
        except TiltSeriesError as err:
            fail(PROG, str(err))
        start = time.perf_counter()
        config = train(data, self.steps, self.output_dir, pixel_size=self.pixel_size)
        seconds = time.perf_counter() - start
        model, _ = load_model(config)
        atoms = atoms_from_model(model)
        out = config.parent / "atoms.xyz"
        ase.io.write(out, atoms, format="extxyz")
        print(f"\n{len(atoms)} atoms written to {out} (training took {seconds:.0f} s)")
        truth_path = ground_truth_path(data)
        if truth_path is not None:
            truth = ase.io.read(truth_path)
            labelled = set(atoms.get_chemical_symbols()) != {"X"}
            report = evaluate(
                atoms.positions,
                truth.positions,
                atoms.get_chemical_symbols() if labelled else None,
                truth.get_chemical_symbols() if labelled else None,
                self.max_distance,
            )
            print(report.summary())
        figure = plot_report(model, atoms, truth_path, config.parent / "report.png")
        print(f"figure: {figure}")
        return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return tyro.cli(Demo, prog=PROG, args=argv, config=TYRO_CONFIG).main()


def entrypoint():
    """Console script ``atomsplat-demo``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
