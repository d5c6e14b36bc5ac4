"""Are the per-atom uncertainties calibrated? Predicted (Cramer-Rao) against actual position errors.

    python benchmarks/calibration.py ATOMS.xyz TRUTH.xyz [--name si2nm_d160000]

ATOMS.xyz: atoms exported after a finished run (``atomsplat-export``: extended XYZ with the
``uncertainty`` column, x y z standard deviations in A); TRUTH.xyz: the true atoms. The atoms are
matched one to one within 0.75 A; the errors along x, y, z, after the common shift of all matched
atoms is removed (a global translation is not an atom's error: on misaligned data it is the gauge
the shifts leave), are divided by the predicted standard deviations. Calibrated uncertainties give
ratios of standard deviation 1 on every axis (the issue's criterion: 0.8-1.25). Writes
docs/benchmarks/calibration_<name>.json and docs/figures/calibration_<name>.png: predicted against
actual error per axis (the lines |error| = 1, 2, 3 sigma) and the histogram of the ratios beside a
standard normal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np

from atomsplat.analysis.matching import match_atoms

ROOT = Path(__file__).resolve().parents[1]
AXES = "xyz"


def calibration(found: ase.Atoms, truth: ase.Atoms) -> dict:
    """Errors (A, common shift removed), predicted standard deviations (A) and their ratios of the
    matched atoms, with the ratios' standard deviation per axis."""
    if "uncertainty" not in found.arrays:
        raise SystemExit("calibration: the atoms have no 'uncertainty' column (export a finished run)")
    pi, ti, _ = match_atoms(found.positions, truth.positions)
    errors = found.positions[pi] - truth.positions[ti]
    shift = errors.mean(axis=0)
    errors = errors - shift
    predicted = found.arrays["uncertainty"][pi]
    ratios = errors / predicted
    return {
        "matched": int(len(pi)),
        "found": int(len(found)),
        "true": int(len(truth)),
        "common_shift": shift.tolist(),
        "rmse_3d": float(np.sqrt((errors**2).sum(axis=1).mean())),
        "crb_3d": float(np.sqrt((predicted**2).sum(axis=1).mean())),
        "ratio_std": ratios.std(axis=0).tolist(),
        "errors": errors,
        "predicted": predicted,
        "ratios": ratios,
    }


def plot(result: dict, title: str, path: Path) -> None:
    """Predicted against actual error per axis, and the histogram of the ratios."""
    from atomsplat.report import pyplot, save_figure

    plt = pyplot()

    errors, predicted, ratios = result["errors"], result["predicted"], result["ratios"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    top = 1.05 * max(float(predicted.max()), float(np.abs(errors).max() / 3)) * 100
    for k, colour in enumerate(("tab:blue", "tab:orange", "tab:green")):
        left.scatter(predicted[:, k] * 100, np.abs(errors[:, k]) * 100, s=8, alpha=0.6, color=colour, label=AXES[k])
    line = np.linspace(0, top, 2)
    for n in (1, 2, 3):
        left.plot(line, n * line, "k--" if n == 1 else "k:", linewidth=0.8)
    left.set_xlim(0, top)
    left.set_ylim(0, 3.2 * top)
    left.set_xlabel("predicted standard deviation (pm)")
    left.set_ylabel("|error| (pm)")
    left.legend(title="axis")
    left.set_title("per atom and axis; lines: 1, 2, 3 sigma")
    bins = np.linspace(-4.5, 4.5, 37)
    for k, colour in enumerate(("tab:blue", "tab:orange", "tab:green")):
        label = f"{AXES[k]}: std {result['ratio_std'][k]:.2f}"
        right.hist(ratios[:, k], bins=bins, density=True, histtype="step", color=colour, label=label)
    grid = np.linspace(-4.5, 4.5, 200)
    right.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "k--", label="standard normal")
    right.set_xlabel("error / predicted standard deviation")
    right.legend()
    right.set_title("calibrated: std 1 (0.8-1.25 accepted)")
    fig.suptitle(
        f"{title}: {result['matched']} matched atoms, RMSE {result['rmse_3d'] * 100:.2f} pm, "
        f"Cramer-Rao {result['crb_3d'] * 100:.2f} pm (3D)"
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("atoms", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--name", default=None, help="label of the outputs (default: the atoms file's stem)")
    args = parser.parse_args()
    name = args.name or args.atoms.stem
    result = calibration(ase.io.read(args.atoms), ase.io.read(args.truth))
    plot(result, name, ROOT / "docs" / "figures" / f"calibration_{name}.png")
    summary = {key: value for key, value in result.items() if not isinstance(value, np.ndarray)}
    out = ROOT / "docs" / "benchmarks" / f"calibration_{name}.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
