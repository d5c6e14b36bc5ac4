"""``atomsplat-simulate``: simulate a tilt-series dataset of an atomic structure with abTEM.

atomsplat-simulate STRUCTURE --tilt=-70:70:3 --output DIR [--pixel-size 0.25]
    [--probe-sigma 0.5] [--noise-sigma 50 | --dose D] [--seed 0] [--shape H W]
    [--tilt-axis-angle 0] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys

import ase.io

from atomsplat.data.formats import write_tilt_series
from atomsplat.data.series import parse_tilt_scheme
from atomsplat.data.tiff_dataset import check_writable
from atomsplat.sim.simulate import center_structure, simulate_tilt_series

# The paper's additive noise, in abTEM's projected-potential units (V A).
PAPER_NOISE_SIGMA = 50.0


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="atomsplat-simulate",
        description=(
            "Simulate a tilt series of an atomic structure as in the paper: abTEM's projected "
            "potential (Lobato parametrization, V A) at each tilt angle, blurred by a Gaussian "
            "probe, plus Gaussian or Poisson noise. The structure is first centred (on its cell "
            "when it has one in all three directions, else on its bounding box); the dataset "
            "directory holds the projections, angles, metadata and the centred atoms as ground truth."
        ),
    )
    parser.add_argument(
        "structure", help="atomic structure, any file ase.io.read reads (e.g. .xyz, .cif); positions in A"
    )
    parser.add_argument(
        "--tilt",
        required=True,
        metavar="START:STOP:STEP",
        help="tilt angles in degrees from START to STOP (included) in steps of STEP, e.g. -70:70:3",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="dataset directory to write")
    parser.add_argument(
        "--pixel-size", type=float, default=0.25, metavar="A", help="pixel size in A (default: %(default)s)"
    )
    parser.add_argument(
        "--probe-sigma",
        type=float,
        default=0.5,
        metavar="A",
        help="Gaussian probe standard deviation in A, 0 for none (default: %(default)s)",
    )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "--noise-sigma",
        type=float,
        metavar="VA",
        help=f"standard deviation of additive Gaussian noise in V A (default: {PAPER_NOISE_SIGMA:g}, "
        "as in the paper; 0 for none)",
    )
    noise.add_argument(
        "--dose",
        type=float,
        metavar="E_PER_A2",
        help="Poisson noise instead: electrons per A^2; the brightest pixel expects dose * pixel_size^2 counts",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the noise (default: %(default)s)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="projection size in pixels (default: the cell's y and x extent, "
        "or a square holding the structure at every tilt)",
    )
    parser.add_argument(
        "--tilt-axis-angle",
        type=float,
        default=0.0,
        metavar="DEG",
        help="in-plane angle of the tilt axis from the detector x axis, counter-clockwise, degrees "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--misalign",
        type=float,
        default=0.0,
        metavar="PIXELS",
        help="spoil the alignment: move each projection by an unknown random shift of up to PIXELS along x and y "
        "(the true shifts go to metadata.json's simulation record, not to 'shifts'; default: %(default)s)",
    )
    parser.add_argument(
        "--background-ramp",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="add an unknown plane background to each projection, of mean level FRACTION of the series maximum "
        "and a random slope (default: %(default)s)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in DIR")
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse takes "--tilt -70:70:3" for two options; glue a tilt scheme to its flag.
    for k in range(len(argv) - 1):
        if argv[k] == "--tilt" and argv[k + 1][:1] == "-" and argv[k + 1][1:2].isdigit():
            argv[k : k + 2] = [f"--tilt={argv[k + 1]}"]
            break
    args = parser.parse_args(argv)

    try:
        angles = parse_tilt_scheme(args.tilt)
    except ValueError as err:
        parser.error(f"--tilt: {err}")
    try:
        atoms = ase.io.read(args.structure)
    except Exception as err:  # ase raises many kinds of errors for missing or malformed files
        parser.error(f"cannot read structure file {args.structure!r}: {str(err) or type(err).__name__}")
    try:
        check_writable(args.output, args.overwrite)  # before minutes of simulation, not after
    except FileExistsError as err:
        parser.exit(2, f"atomsplat-simulate: error: {err} (--overwrite)\n")
    atoms = center_structure(atoms)
    noise_sigma = (
        args.noise_sigma if args.noise_sigma is not None else (0.0 if args.dose is not None else PAPER_NOISE_SIGMA)
    )
    try:
        series = simulate_tilt_series(
            atoms,
            angles,
            pixel_size=args.pixel_size,
            probe_sigma=args.probe_sigma,
            noise_sigma=noise_sigma,
            dose=args.dose,
            seed=args.seed,
            shape=args.shape,
            tilt_axis_angle=args.tilt_axis_angle,
            misalignment=args.misalign,
            background_ramp=args.background_ramp,
        )
        write_tilt_series(args.output, series, ground_truth=atoms, overwrite=args.overwrite)
    except ValueError as err:  # bad parameters, or a series the dataset format refuses
        parser.error(str(err))
    except OSError as err:
        parser.exit(2, f"atomsplat-simulate: error: cannot write {args.output!r}: {err}\n")
    n, h, w = series.shape
    print(
        f"atomsplat-simulate: {n} projections of {h} x {w} pixels at {args.pixel_size:g} A, "
        f"{len(atoms)} atoms ({atoms.get_chemical_formula()}) -> {args.output}"
    )
    return 0


def entrypoint():
    """Console script ``atomsplat-simulate``."""
    sys.exit(main())
