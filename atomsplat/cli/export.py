"""``atomsplat-export``: the atoms of a trained run as extended XYZ.

    atomsplat-export --load-config outputs/.../config.yml --output atoms.xyz [--elements Fe,Pt]

A run that learned per-projection shifts or a background also gets ``atoms_corrections.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import tyro
from tyro.conf import arg

from atomsplat.cli import TYRO_CONFIG, fail

PROG = "atomsplat-export"


@dataclass
class Export:
    """Write the atoms of a trained atomsplat run as extended XYZ: positions in A in the sample frame (the frame
    of ground_truth.xyz), per-atom weight and width sigma (A); learned shifts or background go to
    OUTPUT_corrections.json."""

    load_config: Annotated[Path, arg(metavar="CONFIG")]
    """the run's config.yml, as printed by ns-train"""
    output: Annotated[Path, arg(metavar="OUTPUT.xyz")]
    """extended XYZ file to write"""
    elements: Annotated[
        Optional[str], arg(metavar="A,B", help_behavior_hint="(default: the dataset's metadata 'elements', else X)")
    ] = None
    """comma-separated species, e.g. Fe,Pt, assigned by clustering the weights (heavier element = larger weight)"""
    overwrite: bool = False
    """replace --output (and its corrections file) if it exists"""

    def main(self) -> int:
        """Load the run, write its atoms; bad input stops with a one-line error (exit status 2)."""
        import ase.io

        from atomsplat.export import atoms_from_model, corrections_from_model, load_model

        if self.output.exists() and not self.overwrite:
            fail(PROG, f"{self.output} exists; choose another --output or pass --overwrite")
        try:
            model, step = load_model(self.load_config)
            atoms = atoms_from_model(model, self.elements.split(",") if self.elements else None)
        except (FileNotFoundError, TypeError, ValueError) as err:
            fail(PROG, str(err))
        corrections = corrections_from_model(model)
        sidecar = self.output.with_name(self.output.stem + "_corrections.json")
        if corrections and sidecar.exists() and not self.overwrite:
            fail(PROG, f"{sidecar} exists; choose another --output or pass --overwrite")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(self.output, atoms, format="extxyz")
        print(f"{len(atoms)} atoms from step {step} written to {self.output}")
        if corrections:
            sidecar.write_text(json.dumps(corrections, indent=1) + "\n")
            learned = ", ".join(k for k in ("shifts", "background") if k in corrections)
            print(f"learned per-projection corrections ({learned}) written to {sidecar}")
        return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return tyro.cli(Export, prog=PROG, args=argv, config=TYRO_CONFIG).main()


def entrypoint():
    """Console script ``atomsplat-export``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
