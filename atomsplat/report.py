"""Figures: a trained model's report (measured vs modelled projection, residual, a slab of atoms)
and the comparison's figures (central slices with found atoms, bar charts, weight histograms)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

SLAB = 1.0  # A: half-thickness of the central slabs the comparison's figures show


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


def central_slab(volume: np.ndarray, voxel: float, slab: float = SLAB) -> np.ndarray:
    """(nx, ny): the mean of ``volume`` (nx, ny, nz; voxel ``voxel`` A, centred on the origin)
    over its central voxels along z, those within ``slab`` A of z = 0 (at least two)."""
    nz = volume.shape[2]
    half = max(0, int(round(slab / voxel)) - 1)
    return volume[:, :, nz // 2 - half - 1 : nz // 2 + half + 1].mean(axis=2)


def plot_slices(
    truth, truth_slab: np.ndarray, found: Dict, voxel: float, path: Path, title: str = "", slab: float = SLAB
) -> Path:
    """Central slabs of the true potential and of each method's volume with atoms marked (the
    paper's Figure 3): true atoms within ``slab`` A of z = 0 on the truth, each method's found
    atoms within the same slab on its volume (circles matched, red squares false).

    Args:
        truth: ase.Atoms, the true structure (A, sample frame).
        truth_slab: (nx, ny) :func:`central_slab` of the true potential on the common grid.
        found: method name -> object with ``positions`` (K, 3) A and ``slab`` (nx, ny), the
            :func:`central_slab` of its volume.
        voxel: voxel edge, A; the grid is centred on the origin.
        slab: half-thickness of the slab, A (that of the slabs given).
    """
    from atomsplat.analysis.matching import match_atoms

    plt = _pyplot()
    panels = [("truth", truth.positions, truth_slab, None)]
    for name, result in found.items():
        pred, _, _ = match_atoms(result.positions, truth.positions)
        false = np.setdiff1d(np.arange(len(result.positions)), pred)
        panels.append((name, result.positions, result.slab, false))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4), constrained_layout=True)
    for ax, (name, positions, image, false) in zip(np.atleast_1d(axes), panels):
        nx, ny = image.shape
        extent = np.array([-nx, nx, ny, -ny]) * voxel / 2.0
        ax.imshow(image.T, cmap="gray", extent=extent)
        near = np.abs(positions[:, 2]) < slab
        if false is None:
            ax.scatter(positions[near, 0], positions[near, 1], s=14, facecolors="none", edgecolors="c", linewidths=0.8)
        else:
            is_false = np.zeros(len(positions), bool)
            is_false[false] = True
            ok, bad = near & ~is_false, near & is_false
            ax.scatter(positions[ok, 0], positions[ok, 1], s=14, facecolors="none", edgecolors="c", linewidths=0.8)
            ax.scatter(positions[bad, 0], positions[bad, 1], s=20, marker="s", facecolors="none", edgecolors="r")
        ax.set(title=name, xlabel="x (A)", ylabel="y (A)")
    fig.suptitle(f"{title}: mean over |z| < {slab:g} A, atoms in that slab (red squares: false)")
    return _save(plt, fig, path)


def plot_bars(rows, path: Path) -> Path:
    """Bar charts of TPR, FPR and SSIM per particle and method, one row of panels per tilt scheme
    (the paper's Figure 4). ``rows``: result dicts with particle, scheme, method, tpr, fpr, ssim."""
    plt = _pyplot()
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    particles = list(dict.fromkeys(r["particle"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = [("tpr", "TPR"), ("fpr", "FPR"), ("ssim", "SSIM")]
    fig, axes = plt.subplots(
        len(schemes),
        len(metrics),
        figsize=(5 * len(metrics), 3.4 * len(schemes)),
        squeeze=False,
        constrained_layout=True,
    )
    width = 0.8 / len(methods)
    for i, scheme in enumerate(schemes):
        for j, (key, label) in enumerate(metrics):
            ax = axes[i, j]
            for m, method in enumerate(methods):
                values = [
                    next(
                        (
                            r[key] or 0.0
                            for r in rows
                            if r["scheme"] == scheme and r["particle"] == particle and r["method"] == method
                        ),
                        np.nan,
                    )
                    for particle in particles
                ]
                ax.bar(np.arange(len(particles)) + (m - (len(methods) - 1) / 2) * width, values, width, label=method)
            ax.set_xticks(np.arange(len(particles)), particles)
            ax.set(title=f"{label}, {scheme}", ylim=(0, 1.02 if key != "fpr" else None))
    axes[0, 0].legend(fontsize=8)
    return _save(plt, fig, path)


def plot_weight_histograms(weights_by_method: Dict, path: Path) -> Path:
    """Histograms of the learned log-weights of matched atoms by their true species, one panel per
    method (the ablation's species separation). ``weights_by_method``: name -> (weights (M,),
    species (M,))."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(weights_by_method), figsize=(5 * len(weights_by_method), 3.6), squeeze=False, constrained_layout=True
    )
    for ax, (name, (weights, species)) in zip(axes[0], weights_by_method.items()):
        logs = np.log10(np.clip(weights, 1e-12, None))
        bins = np.linspace(logs.min(), logs.max(), 60) if len(logs) else 10
        for symbol in sorted(set(species)):
            ax.hist(logs[species == symbol], bins=bins, alpha=0.6, label=f"{symbol} ({int(np.sum(species == symbol))})")
        ax.set(title=name, xlabel="log10 weight", ylabel="matched atoms")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)
