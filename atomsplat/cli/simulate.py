"""``atomsplat-simulate``: simulate a tilt-series dataset of an atomic structure with abTEM.

atomsplat-simulate STRUCTURE --tilt=-70:70:3 --output DIR [--pixel-size 0.25] [--probe-sigma 0.5]
    [--noise-sigma 50 | --dose D [--pedestal 1] [--adf-exponent 1.7]] [--seed 0] [--shape H W]
    [--tilt-axis-angle 0] [--overwrite]

STRUCTURE is a file ASE reads, or a built-in particle by name (:data:`atomsplat.sim.structures.PARTICLES`),
``NAME`` or ``NAME:SIZE`` (quick, full, large), e.g. ``si:quick`` for a 2 nm amorphous Si particle.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional, Tuple

import tyro
from tyro.conf import arg

from atomsplat.cli import TYRO_CONFIG, fail

PROG = "atomsplat-simulate"
# The paper's additive noise, in abTEM's projected-potential units (V A).
PAPER_NOISE_SIGMA = 50.0

Noise = tyro.conf.create_mutex_group(required=False, title="noise (at most one)")


@dataclass
class Simulate:
    """Simulate a tilt series of an atomic structure as in the paper (abTEM's projected potential, a Gaussian
    probe, Gaussian or Poisson noise) and write it to DIR, with the atoms, centred, as ground_truth.xyz."""

    structure: Annotated[Path, tyro.conf.Positional, arg(metavar="STRUCTURE")]
    """atomic structure, any file ase.io.read reads (e.g. .xyz, .cif; positions in A), or a built-in
    particle NAME[:SIZE], e.g. si:quick (a 2 nm amorphous Si particle), au, fept:full"""
    tilt: Annotated[str, arg(metavar="START:STOP:STEP")]
    """tilt angles in degrees from START to STOP (included) in steps of STEP, e.g. --tilt=-70:70:3"""
    output: Annotated[Path, arg(metavar="DIR")]
    """dataset directory to write"""
    pixel_size: Annotated[float, arg(metavar="A")] = 0.25
    """pixel size in A"""
    probe_sigma: Annotated[float, arg(metavar="A")] = 0.5
    """Gaussian probe standard deviation in A, 0 for none"""
    noise_sigma: Annotated[
        Optional[float],
        Noise,
        arg(metavar="VA", help_behavior_hint=f"(default: {PAPER_NOISE_SIGMA:g}, as in the paper)"),
    ] = None
    """standard deviation of additive Gaussian noise in V A, 0 for none"""
    dose: Annotated[Optional[float], Noise, arg(metavar="E_PER_A2", help_behavior_hint="")] = None
    """ADF-STEM counts instead: electrons per A^2 per projection; each atom sends dose x its ADF
    cross-section (Z^1.7 law, atomsplat.sim.adf) to the detector, plus a pedestal, Poisson noise"""
    pedestal: Annotated[float, arg(metavar="COUNTS")] = 1.0
    """with --dose: counts per pixel of dark counts and detector offset"""
    adf_exponent: Annotated[float, arg(metavar="N")] = 1.7
    """with --dose: exponent n of the ADF cross-section sigma(Z) ~ Z^n"""
    seed: int = 0
    """random seed of the noise"""
    shape: Annotated[
        Optional[Tuple[int, int]],
        arg(
            metavar="H W",
            help_behavior_hint="(default: the cell's y and x extent, or a square holding the structure at every tilt)",
        ),
    ] = None
    """projection size in pixels"""
    tilt_axis_angle: Annotated[float, arg(metavar="DEG")] = 0.0
    """in-plane angle of the tilt axis from the detector x axis, counter-clockwise, degrees"""
    misalign: Annotated[float, arg(metavar="PIXELS")] = 0.0
    """shift each projection by an unknown random amount of up to PIXELS in x and y (truth: metadata.json)"""
    background_ramp: Annotated[float, arg(metavar="FRACTION")] = 0.0
    """add an unknown plane background to each projection: mean FRACTION of the series maximum, random slope"""
    overwrite: bool = False
    """replace an existing dataset in DIR"""

    def main(self) -> int:
        """Simulate and write the dataset; bad input stops with a one-line error (exit status 2)."""

        from atomsplat.data.formats import write_tilt_series
        from atomsplat.data.series import parse_tilt_scheme
        from atomsplat.data.tiff_dataset import check_writable
        from atomsplat.sim.simulate import center_structure, simulate_tilt_series

        try:
            angles = parse_tilt_scheme(self.tilt)
        except ValueError as err:
            fail(PROG, f"--tilt: {err}")
        atoms = read_structure(self.structure, self.seed)
        try:
            check_writable(self.output, self.overwrite)  # before minutes of simulation, not after
        except FileExistsError as err:
            fail(PROG, f"{err} (--overwrite)")
        atoms = center_structure(atoms)
        noise_sigma = self.noise_sigma
        if noise_sigma is None:
            noise_sigma = 0.0 if self.dose is not None else PAPER_NOISE_SIGMA
        try:
            series = simulate_tilt_series(
                atoms,
                angles,
                pixel_size=self.pixel_size,
                probe_sigma=self.probe_sigma,
                noise_sigma=noise_sigma,
                dose=self.dose,
                seed=self.seed,
                shape=self.shape,
                tilt_axis_angle=self.tilt_axis_angle,
                misalignment=self.misalign,
                background_ramp=self.background_ramp,
                pedestal=self.pedestal,
                adf_exponent=self.adf_exponent,
            )
            write_tilt_series(self.output, series, ground_truth=atoms, overwrite=self.overwrite)
        except ValueError as err:  # bad parameters, or a series the dataset format refuses
            fail(PROG, str(err))
        except OSError as err:
            fail(PROG, f"cannot write {str(self.output)!r}: {err}")
        n, h, w = series.shape
        print(
            f"{PROG}: {n} projections of {h} x {w} pixels at {self.pixel_size:g} A, "
            f"{len(atoms)} atoms ({atoms.get_chemical_formula()}) -> {self.output}"
        )
        return 0


def read_structure(structure: Path, seed: int):
    """The atoms of a structure file, or of a built-in particle ``NAME[:SIZE]`` built with ``seed``;
    a one-line error when it is neither."""
    import ase.io

    from atomsplat.sim.structures import PARTICLES, build_particle

    name, _, size = str(structure).partition(":")
    if not structure.exists() and name in PARTICLES:
        try:
            return build_particle(name, size or "quick", seed)
        except (ValueError, KeyError) as err:
            fail(PROG, f"particle {str(structure)!r}: {err}")
    try:
        return ase.io.read(structure)
    except Exception as err:  # ase raises many kinds of errors for missing or malformed files
        names = ", ".join(sorted(PARTICLES))
        fail(
            PROG, f"cannot read structure file {str(structure)!r} ({str(err) or type(err).__name__}); built-in: {names}"
        )


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return tyro.cli(Simulate, prog=PROG, args=argv, config=TYRO_CONFIG).main()


def entrypoint():
    """Console script ``atomsplat-simulate``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
