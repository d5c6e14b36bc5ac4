"""``atomsplat-export``: the atoms of a trained run as extended XYZ.

    atomsplat-export --load-config outputs/.../config.yml --output atoms.xyz [--elements Fe,Pt]

A run that learned per-projection shifts or a background also gets ``atoms_corrections.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ase.io


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="atomsplat-export",
        description=(
            "Write the atoms found by a trained atomsplat run: positions in A in the sample frame "
            "(the frame of ground_truth.xyz), with per-atom integrated weight and width sigma (A)."
        ),
    )
    parser.add_argument("--load-config", required=True, type=Path, help="the run's config.yml, as printed by ns-train")
    parser.add_argument("--output", required=True, type=Path, help="extended XYZ file to write")
    parser.add_argument(
        "--elements",
        help="comma-separated species, e.g. Fe,Pt: atoms are labelled by clustering their weights "
        "(heavier element = larger weight); default: the dataset's metadata 'elements', else X",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.overwrite:
        parser.error(f"{args.output} exists; choose another --output or pass --overwrite")

    from atomsplat.export import atoms_from_model, corrections_from_model, load_model

    try:
        model, step = load_model(args.load_config)
        elements = args.elements.split(",") if args.elements else None
        atoms = atoms_from_model(model, elements)
    except (FileNotFoundError, TypeError, ValueError) as err:
        parser.error(str(err))
    corrections = corrections_from_model(model)
    sidecar = args.output.with_name(args.output.stem + "_corrections.json")
    if corrections and sidecar.exists() and not args.overwrite:
        parser.error(f"{sidecar} exists; choose another --output or pass --overwrite")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(args.output, atoms, format="extxyz")
    print(f"{len(atoms)} atoms from step {step} written to {args.output}")
    if corrections:
        sidecar.write_text(json.dumps(corrections, indent=1) + "\n")
        learned = ", ".join(k for k in ("shifts", "background") if k in corrections)
        print(f"learned per-projection corrections ({learned}) written to {sidecar}")
    return 0


def entrypoint():
    sys.exit(main())
