"""``atomsplat-eval``: compare identified atoms with the true atoms.

atomsplat-eval PRED.xyz TRUE.xyz [--max-distance 0.75] [--json OUT.json]
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import ase.io
import numpy as np
import tyro
from tyro.conf import Positional, arg

from atomsplat.analysis.matching import PAPER_MAX_DISTANCE, evaluate
from atomsplat.cli import TYRO_CONFIG, fail

PROG = "atomsplat-eval"


def _read(path: Path, role: str):
    """(positions (N, 3) in A, symbols (N,) or None when all are 'X') of the last frame in ``path``."""
    try:
        atoms = ase.io.read(path)
    except Exception as err:  # ase raises many kinds of errors for missing or malformed files
        fail(PROG, f"cannot read {role} file {str(path)!r}: {str(err) or type(err).__name__}")
    symbols = np.array(atoms.get_chemical_symbols())
    labelled = len(symbols) > 0 and not np.all(symbols == "X")
    return atoms.get_positions(), symbols if labelled else None


@dataclass
class Evaluate:
    """Match identified atoms one-to-one to true atoms (both in A, sample frame; any file ase.io.read reads, last
    frame) and report TPR (true atoms found), FPR (identified atoms matching none), RMS position error and, when
    both files name species (not all 'X'), species accuracy."""

    pred: Annotated[Path, Positional, arg(metavar="PRED")]
    """identified atoms, e.g. the export of a trained model (.xyz)"""
    true: Annotated[Path, Positional, arg(metavar="TRUE")]
    """true atoms, e.g. a dataset's ground_truth.xyz"""
    max_distance: Annotated[
        float, arg(metavar="A", help_behavior_hint=f"(default: {PAPER_MAX_DISTANCE}, as in the paper)")
    ] = PAPER_MAX_DISTANCE
    """largest distance in A at which an identified atom finds a true atom"""
    json_out: Annotated[Optional[Path], arg(name="json", metavar="OUT.json", help_behavior_hint="")] = None
    """also write the report as JSON here"""

    def main(self) -> int:
        """Print the report; bad input stops with a one-line error (exit status 2)."""
        if not self.max_distance > 0:
            fail(PROG, "--max-distance must be positive")
        pred_pos, pred_sym = _read(self.pred, "prediction")
        true_pos, true_sym = _read(self.true, "truth")
        report = evaluate(pred_pos, true_pos, pred_sym, true_sym, self.max_distance)
        print(report.summary())
        if self.json_out is not None:
            record = {"pred": str(self.pred), "true": str(self.true), **report.as_dict()}
            try:
                self.json_out.write_text(json.dumps(record, indent=2))
            except OSError as err:
                fail(PROG, f"cannot write {str(self.json_out)!r}: {err}")
        return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return tyro.cli(Evaluate, prog=PROG, args=argv, config=TYRO_CONFIG).main()


def entrypoint():
    """Console script ``atomsplat-eval``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
