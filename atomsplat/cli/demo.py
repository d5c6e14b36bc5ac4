"""``atomsplat-demo``: train on a tilt series (default: the bundled one), export, evaluate, plot.

    atomsplat-demo [--data DIR | --data STACK.mrc] [--pixel-size A] [--steps 2000] [--output-dir outputs]

The same as ``ns-train atomsplat --data DIR``, then ``atomsplat-export`` and ``atomsplat-eval``,
in one command; it also draws ``report.png`` beside the run's config.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ase.io

from atomsplat.training import train


def main(argv=None) -> int:
    from atomsplat.data.dataparser import bundled_demo_path

    parser = argparse.ArgumentParser(
        prog="atomsplat-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=bundled_demo_path(),
        help="dataset directory (projections.tif or the paper's transforms.json) or MRC stack "
        "(default: the bundled Pt-Ni particle)",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        metavar="A",
        help="detector pixel size in A, overriding metadata.json and the MRC header (needed where neither gives it)",
    )
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default: %(default)s)")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs"), help="where runs are written (default: %(default)s)"
    )
    parser.add_argument(
        "--max-distance", type=float, default=0.75, help="matching distance for evaluation, A (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    from atomsplat.analysis.matching import evaluate
    from atomsplat.data.formats import ground_truth_path, read_tilt_series
    from atomsplat.data.series import TiltSeriesError
    from atomsplat.export import atoms_from_model, load_model
    from atomsplat.report import plot_report

    try:
        read_tilt_series(args.data, pixel_size=args.pixel_size)
    except TiltSeriesError as err:
        parser.error(str(err))
    start = time.perf_counter()
    config = train(args.data, args.steps, args.output_dir, pixel_size=args.pixel_size)
    seconds = time.perf_counter() - start
    model, _ = load_model(config)
    atoms = atoms_from_model(model)
    out = config.parent / "atoms.xyz"
    ase.io.write(out, atoms, format="extxyz")
    print(f"\n{len(atoms)} atoms written to {out} (training took {seconds:.0f} s)")
    truth_path = ground_truth_path(args.data)
    if truth_path is not None:
        truth = ase.io.read(truth_path)
        labelled = set(atoms.get_chemical_symbols()) != {"X"}
        report = evaluate(
            atoms.positions,
            truth.positions,
            atoms.get_chemical_symbols() if labelled else None,
            truth.get_chemical_symbols() if labelled else None,
            args.max_distance,
        )
        print(report.summary())
    figure = plot_report(model, atoms, truth_path, config.parent / "report.png")
    print(f"figure: {figure}")
    return 0


def entrypoint():
    sys.exit(main())
