"""A trained model's report figure: measured vs modelled projection, residual, a slab of atoms.

The comparison's tables and figures are in :mod:`atomsplat.benchmark.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path) -> Path:
    """Write ``fig`` as a PNG to ``path``, close it, and return the path."""
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_report(model, atoms, truth_path: Optional[Path], path: Path, slab: float = 1.5) -> Path:
    """Write a 4-panel PNG and return its path.

    Panels: the measured projection nearest to 0 degrees, the model's projection of that view,
    their difference, and the atoms within ``slab`` A of the central z = 0 plane (sample frame),
    coloured by species, with missed true atoms and unmatched found atoms marked when the true
    atoms are known.
    """
    import ase.io

    from atomsplat.analysis.matching import match_atoms

    plt = _pyplot()
    series = model.series
    k = int(np.argmin(np.abs(series.tilt_angles)))
    _, height, width = series.shape
    modelled = model.render_projections([k])[0].cpu().numpy()
    measured = series.projections[k]
    extent = np.array([-width, width, height, -height]) * series.pixel_size / 2.0

    fig, axes = plt.subplots(1, 4, figsize=(20, 5), constrained_layout=True)
    top = float(measured.max())
    for ax, image, title in (
        (axes[0], measured, f"measured, tilt {series.tilt_angles[k]:.0f} deg"),
        (axes[1], modelled, f"model ({len(atoms)} atoms)"),
    ):
        shown = ax.imshow(image, cmap="gray", vmin=0, vmax=top, extent=extent)
        ax.set(title=title, xlabel="x (A)", ylabel="y (A)")
    fig.colorbar(shown, ax=axes[1], shrink=0.8, label="projected potential")
    residual = measured - modelled
    bound = float(np.abs(residual).max())
    shown = axes[2].imshow(residual, cmap="RdBu_r", vmin=-bound, vmax=bound, extent=extent)
    axes[2].set(title="measured - model", xlabel="x (A)", ylabel="y (A)")
    fig.colorbar(shown, ax=axes[2], shrink=0.8)

    ax = axes[3]
    found = atoms.positions
    in_slab = np.abs(found[:, 2]) < slab
    symbols = np.array(atoms.get_chemical_symbols())
    for symbol in sorted(set(symbols)):
        pick = in_slab & (symbols == symbol)
        ax.scatter(found[pick, 0], found[pick, 1], s=30, label=f"found {symbol}")
    if truth_path is not None:
        truth = ase.io.read(truth_path).positions
        pred_idx, true_idx, _ = match_atoms(found, truth)
        missed = np.setdiff1d(np.arange(len(truth)), true_idx)
        false = np.setdiff1d(np.arange(len(found)), pred_idx)
        pick = missed[np.abs(truth[missed, 2]) < slab]
        ax.scatter(truth[pick, 0], truth[pick, 1], marker="x", c="k", s=60, label=f"missed ({len(missed)} in all)")
        pick = false[np.abs(found[false, 2]) < slab]
        ax.scatter(
            found[pick, 0],
            found[pick, 1],
            marker="s",
            facecolors="none",
            edgecolors="r",
            s=80,
            label=f"false ({len(false)} in all)",
        )
    ax.set(title=f"atoms with |z| < {slab} A", xlabel="x (A)", ylabel="y (A)", aspect="equal")
    ax.invert_yaxis()
    ax.legend(loc="upper right", fontsize=8)
    return _save(plt, fig, path)
