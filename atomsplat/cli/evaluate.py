"""``atomsplat-eval``: compare identified atoms with the true atoms.

atomsplat-eval PRED.xyz TRUE.xyz [--max-distance 0.75] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import ase.io
import numpy as np

from atomsplat.analysis.matching import PAPER_MAX_DISTANCE, evaluate


def _read(parser: argparse.ArgumentParser, path: str, role: str):
    """(positions (N, 3) in A, symbols (N,) or None when all are 'X') of the last frame in ``path``."""
    try:
        atoms = ase.io.read(path)
    except Exception as err:  # ase raises many kinds of errors for missing or malformed files
        parser.error(f"cannot read {role} file {path!r}: {str(err) or type(err).__name__}")
    symbols = np.array(atoms.get_chemical_symbols())
    labelled = len(symbols) > 0 and not np.all(symbols == "X")
    return atoms.get_positions(), symbols if labelled else None


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="atomsplat-eval",
        description=(
            "Match identified atoms one-to-one to true atoms (both in A, sample frame) and "
            "report the true-positive rate (fraction of true atoms found), false-positive rate "
            "(fraction of identified atoms matching none), RMS position error and, when both "
            "files name species, species accuracy. Atoms whose symbols are all 'X' count as "
            "unlabelled. Any format ase.io.read knows is accepted; the last frame is used."
        ),
    )
    parser.add_argument("pred", help="identified atoms, e.g. the export of a trained model (.xyz)")
    parser.add_argument("true", help="true atoms, e.g. a dataset's ground_truth.xyz")
    parser.add_argument(
        "--max-distance",
        type=float,
        default=PAPER_MAX_DISTANCE,
        metavar="A",
        help="largest distance in A at which an identified atom finds a true atom "
        "(default: %(default)s, as in the paper)",
    )
    parser.add_argument("--json", metavar="OUT.json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if not args.max_distance > 0:
        parser.error("--max-distance must be positive")

    pred_pos, pred_sym = _read(parser, args.pred, "prediction")
    true_pos, true_sym = _read(parser, args.true, "truth")
    report = evaluate(pred_pos, true_pos, pred_sym, true_sym, args.max_distance)
    print(report.summary())
    if args.json:
        record = {"pred": args.pred, "true": args.true, **report.as_dict()}
        try:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=2)
        except OSError as err:
            parser.error(f"cannot write {args.json!r}: {err}")
    return 0


def entrypoint():
    """Console script ``atomsplat-eval``."""
    sys.exit(main())
