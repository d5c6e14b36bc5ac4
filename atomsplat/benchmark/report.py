"""The comparison's tables and figures: markdown tables of the results, central slices with the
atoms found, bar charts of the scores, histograms of learned weights by species.

Everything here presents :mod:`atomsplat.benchmark.results` records; the numbers are computed in
:mod:`atomsplat.benchmark.run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from atomsplat.benchmark.results import Results, Row
from atomsplat.report import _pyplot, _save

SLAB = 1.0  # A: half-thickness of the central slabs the slice figures show


# ----------------------------------------------------------------------------- tables
def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean(values) -> Optional[float]:
    """The mean of ``values``, None when any is None (or there are none)."""
    values = list(values)
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def results_markdown(results: Results) -> str:
    """The results as markdown: one table per scheme, the mean over particles, the ablation, the
    methods skipped. Projection columns (PSNR and SSIM of the held-out projections) appear when
    any row has them."""
    rows = results.rows
    lines = [f"Machine: {results.machine}.", ""]
    methods = list(dict.fromkeys(r.method for r in rows))
    projected = any(r.projection_psnr is not None for r in rows)
    extra_head = " proj. PSNR (dB) | proj. SSIM |" if projected else ""
    extra_rule = "---|---|" if projected else ""
    for scheme in dict.fromkeys(r.scheme for r in rows):
        picked = [r for r in rows if r.scheme == scheme]
        lines += [
            f"### Tilts {picked[0].tilt} ({scheme})",
            "",
            f"| particle | method | atoms | TPR | FPR | RMSE (A) | species acc. | SSIM |{extra_head} time (s) |",
            f"|---|---|---|---|---|---|---|---|{extra_rule}---|",
        ]
        for r in picked:
            extra = f" {_fmt(r.projection_psnr, 2)} | {_fmt(r.projection_ssim, 3)} |" if projected else ""
            lines.append(
                f"| {r.particle} | {r.method} | {r.n_true} | {_fmt(r.tpr)} | {_fmt(r.fpr)} | {_fmt(r.rmse, 3)} | "
                f"{_fmt(r.species_accuracy, 3)} | {_fmt(r.ssim, 3)} |{extra} {r.seconds:.0f} |"
            )
        lines += [
            "",
            "Mean over particles:",
            "",
            f"| method | TPR | FPR | SSIM |{extra_head}",
            f"|---|---|---|---|{extra_rule}",
        ]
        for method in methods:
            mine = [r for r in picked if r.method == method]
            if mine:
                extra = ""
                if projected:
                    psnr, ssim = _mean(r.projection_psnr for r in mine), _mean(r.projection_ssim for r in mine)
                    extra = f" {_fmt(psnr, 2)} | {_fmt(ssim, 3)} |"
                lines.append(
                    f"| {method} | {_fmt(_mean(r.tpr for r in mine))} | {_fmt(_mean(r.fpr for r in mine))} | "
                    f"{_fmt(_mean(r.ssim for r in mine), 3)} |{extra}"
                )
        lines.append("")
    if results.ablation:
        lines += [
            "### Ablation",
            "",
            "| method | Gaussians per atom | TPR | FPR | species separability | time (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in results.ablation:
            lines.append(
                f"| {r.method} | {r.gaussians_per_atom:.2f} | {_fmt(r.tpr)} | {_fmt(r.fpr)} | "
                f"{_fmt(r.separability, 2)} | {r.seconds:.0f} |"
            )
        lines.append("")
    if results.skipped:
        lines += ["Skipped:", ""] + [f"- {reason}" for reason in results.skipped.values()] + [""]
    if results.total_seconds is not None:
        lines.append(f"Total wall time {results.total_seconds / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def row_summary(row: Row) -> str:
    """One line of a row for the progress log."""
    projected = ""
    if row.projection_psnr is not None:
        projected = f" held-out PSNR {row.projection_psnr:.2f} dB SSIM {_fmt(row.projection_ssim, 3)}"
    return (
        f"TPR {_fmt(row.tpr)} FPR {_fmt(row.fpr)} RMSE {_fmt(row.rmse, 3)} SSIM {_fmt(row.ssim, 3)}{projected} "
        f"({row.seconds:.0f} s)"
    )


# ----------------------------------------------------------------------------- figures
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
        found: method name -> :class:`atomsplat.benchmark.results.Finished` (or any object with
            ``positions`` (K, 3) A and ``slab`` (nx, ny), the :func:`central_slab` of its volume).
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


def plot_bars(rows: List[Row], path: Path) -> Path:
    """Bar charts of TPR, FPR and SSIM (and, with a hold-out, the held-out projections' PSNR and
    SSIM) per particle and method, one row of panels per tilt scheme (the paper's Figure 4); a
    method without a score has no bar."""
    plt = _pyplot()
    schemes = list(dict.fromkeys(r.scheme for r in rows))
    particles = list(dict.fromkeys(r.particle for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    metrics = [("tpr", "TPR"), ("fpr", "FPR"), ("ssim", "SSIM")]
    if any(r.projection_psnr is not None for r in rows):
        metrics += [("projection_psnr", "held-out PSNR (dB)"), ("projection_ssim", "held-out SSIM")]
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
                            np.nan if getattr(r, key) is None else getattr(r, key)
                            for r in rows
                            if r.scheme == scheme and r.particle == particle and r.method == method
                        ),
                        np.nan,
                    )
                    for particle in particles
                ]
                ax.bar(np.arange(len(particles)) + (m - (len(methods) - 1) / 2) * width, values, width, label=method)
            ax.set_xticks(np.arange(len(particles)), particles)
            ax.set(title=f"{label}, {scheme}", ylim=(0, 1.02) if key in ("tpr", "ssim", "projection_ssim") else None)
    axes[0, 0].legend(fontsize=8)
    return _save(plt, fig, path)


def plot_projections(measured: np.ndarray, modelled: Dict, pixel_size: float, path: Path, title: str = "") -> Path:
    """A held-out projection as measured and as each method models it, on one grey scale (the
    measured projection's range), with each residual below its model.

    Args:
        measured: (H, W) the measured projection, data units.
        modelled: method name -> (H, W) its model of it, data units.
        pixel_size: A.
    """
    plt = _pyplot()
    columns = 1 + len(modelled)
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.4), squeeze=False, constrained_layout=True)
    height, width = measured.shape
    extent = np.array([-width, width, height, -height]) * pixel_size / 2.0
    low, high = float(measured.min()), float(measured.max())
    spread = float(np.abs(measured - np.median(measured)).max())
    axes[0, 0].imshow(measured, cmap="gray", vmin=low, vmax=high, extent=extent)
    axes[0, 0].set(title="measured (held out)", xlabel="x (A)", ylabel="y (A)")
    axes[1, 0].axis("off")
    for column, (name, image) in enumerate(modelled.items(), start=1):
        axes[0, column].imshow(image, cmap="gray", vmin=low, vmax=high, extent=extent)
        axes[0, column].set(title=name, xlabel="x (A)")
        shown = axes[1, column].imshow(
            image - measured, cmap="RdBu_r", vmin=-spread / 4, vmax=spread / 4, extent=extent
        )
        axes[1, column].set(title=f"{name} - measured", xlabel="x (A)")
    fig.colorbar(shown, ax=axes[1, 1:], shrink=0.8, label="data units")
    fig.suptitle(title)
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
