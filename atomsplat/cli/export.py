"""``atomsplat-export``: the atoms of a trained run as a file microscopists open, its potential as
an MRC volume, its report figure.

    atomsplat-export --load-config outputs/.../config.yml --output atoms.xyz [--elements Fe,Pt]
                     [--volume potential.mrc [--voxel A]] [--report report.png] [--overwrite]

A run that solved per-projection shifts or a background also gets ``ATOMS_corrections.json``.
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
VOLUME_SUFFIXES = (".mrc",)
REPORT_SUFFIXES = (".png", ".pdf", ".svg")


@dataclass
class Export:
    """Write the atoms of a trained atomsplat run (positions in A in the sample frame, the frame of
    ground_truth.xyz; per-atom weight, width sigma in A and, after a finished run, the Cramer-Rao
    uncertainty of x, y, z in A) in the format of the --output name; the potential of the atoms as an
    MRC volume; the report figure. Learned shifts or background go to ATOMS_corrections.json."""

    load_config: Annotated[Path, arg(metavar="CONFIG")]
    """the run's config.yml, as printed by ns-train"""
    output: Annotated[Optional[Path], arg(metavar="ATOMS", help_behavior_hint="")] = None
    """atoms file, format by name: .xyz/.extxyz (extended XYZ, every per-atom value), .csv (one row per
    atom, units in the header), .pdb, .xsf (non-periodic), .cif, .vasp/POSCAR (in a box with at least 5 A of
    vacuum on each side, the shift stated in the file)"""
    elements: Annotated[
        Optional[str], arg(metavar="A,B", help_behavior_hint="(default: the dataset's metadata 'elements', else X)")
    ] = None
    """comma-separated species, e.g. Fe,Pt, assigned by clustering the weights (heavier element = larger weight)"""
    volume: Annotated[Optional[Path], arg(metavar="VOLUME.mrc", help_behavior_hint="")] = None
    """MRC file for the potential of the atoms (exact voxel means of their Gaussians, weight per A^3) on a
    grid that holds them, x y z of the sample frame, voxel size and origin in the header"""
    voxel: Annotated[Optional[float], arg(metavar="A", help_behavior_hint="(default: the pixel size)")] = None
    """voxel size of --volume, A"""
    report: Annotated[Optional[Path], arg(metavar="REPORT.png", help_behavior_hint="")] = None
    """report figure (.png, .pdf, .svg): projections, residual, atoms by species, weights, uncertainties"""
    overwrite: bool = False
    """replace files that exist (else nothing is written)"""

    def main(self) -> int:
        """Load the run, write what was asked; bad input stops with a one-line error (exit status 2)
        before anything is written."""
        from atomsplat.data.formats import ground_truth_path
        from atomsplat.data.volume import write_volume
        from atomsplat.export import (
            atom_format,
            atoms_from_model,
            atoms_volume,
            corrections_from_model,
            load_model,
            write_atoms,
        )
        from atomsplat.report import plot_report

        outputs = [path for path in (self.output, self.volume, self.report) if path is not None]
        if not outputs:
            fail(PROG, "nothing to write: give --output ATOMS, --volume VOLUME.mrc or --report REPORT.png")
        try:
            if self.output is not None:
                atom_format(self.output)
        except ValueError as err:
            fail(PROG, str(err))
        for path, suffixes, what in (
            (self.volume, VOLUME_SUFFIXES, "--volume"),
            (self.report, REPORT_SUFFIXES, "--report"),
        ):
            if path is not None and path.suffix.lower() not in suffixes:
                kind = path.suffix or "a name without a suffix"
                fail(PROG, f"{path}: {what} cannot write {kind}; use {', '.join(suffixes)}")
        if self.voxel is not None and not self.voxel > 0:
            fail(PROG, f"--voxel must be a positive number of A, got {self.voxel:g}")
        if len(set(outputs)) < len(outputs):
            fail(PROG, f"--output, --volume and --report must be different files, got {', '.join(map(str, outputs))}")
        self._refuse_existing(outputs)
        try:
            model, step = load_model(self.load_config)
            atoms = atoms_from_model(model, self.elements.split(",") if self.elements else None)
        except (FileNotFoundError, TypeError, ValueError) as err:
            fail(PROG, str(err))
        corrections = corrections_from_model(model) if self.output is not None else {}
        sidecar = None
        if corrections:
            sidecar = self.output.with_name(self.output.stem + "_corrections.json")
            self._refuse_existing([sidecar])
        volume = None
        if self.volume is not None:
            try:
                volume = atoms_volume(atoms, model.series, self.voxel)
            except ValueError as err:
                fail(PROG, str(err))

        for path in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
        if self.output is not None:
            what = write_atoms(atoms, self.output)
            print(f"{len(atoms)} atoms from step {step} written to {self.output} ({what})")
        if sidecar is not None:
            sidecar.write_text(json.dumps(corrections, indent=1) + "\n")
            learned = ", ".join(k for k in ("shifts", "background", "gains") if k in corrections)
            print(f"fitted per-projection corrections ({learned}) written to {sidecar}")
        if volume is not None:
            values, corner, voxel = volume
            unit = atoms.info["weight_unit"].split(" (")[0]
            labels = [  # at most 80 characters each
                "atomsplat: potential of the exported atoms, exact voxel means of their Gaussians",
                f"values: weight per A^3 ({unit} / A^3); x, y, z: sample frame, A",
                "origin: centre of voxel (0, 0, 0), sample frame, A",
            ]
            write_volume(self.volume, values, voxel, corner, labels, overwrite=self.overwrite)
            shape = " x ".join(map(str, values.shape))
            print(f"potential of the atoms, {shape} voxels of {voxel:g} A, written to {self.volume}")
        if self.report is not None:
            source = model.series.source
            truth = ground_truth_path(source) if source is not None else None
            print(f"figure: {plot_report(model, atoms, truth, self.report)}")
        return 0

    def _refuse_existing(self, paths) -> None:
        existing = [str(path) for path in paths if path.exists()]
        if existing and not self.overwrite:
            verb = "exists" if len(existing) == 1 else "exist"
            fail(PROG, f"{', '.join(existing)} {verb}; choose another name or pass --overwrite")


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return tyro.cli(Export, prog=PROG, args=argv, config=TYRO_CONFIG).main()


def entrypoint():
    """Console script ``atomsplat-export``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
