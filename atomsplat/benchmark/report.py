"""The comparison's tables and figures: markdown tables of the results, central slices with the
atoms found, bar charts of the scores (or, for a preset over dose, the scores against dose with
the Cramer-Rao bound), histograms of learned weights by species.

Everything here presents :mod:`atomsplat.benchmark.results` records; the numbers are computed in
:mod:`atomsplat.benchmark.run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from atomsplat.benchmark.results import Results, Row
from atomsplat.report import pyplot, save_figure

SLAB = 1.0  # A: half-thickness of the central slabs the slice figures show


# ----------------------------------------------------------------------------- tables
def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean(values) -> Optional[float]:
    """The mean of ``values``, None when any is None (or there are none)."""
    values = list(values)
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _has_doses(rows: List[Row]) -> bool:
    return any(r.dose is not None for r in rows)


def results_markdown(results: Results) -> str:
    """The results as markdown: one table per scheme, the mean over particles, the ablation, the
    methods skipped. Projection columns (PSNR and SSIM of the held-out projections) appear when
    any row has them. Rows of counts (a preset over dose) add the dose (e/A^2), the case's
    Cramer-Rao bound (CRB, A) and RMSE / CRB columns, and the means are taken per method and dose."""
    rows = results.rows
    lines = [f"Machine: {results.machine}.", ""]
    methods = list(dict.fromkeys(r.method for r in rows))
    doses = _has_doses(rows)
    projected = any(r.projection_psnr is not None for r in rows)
    # with doses: the dose after the particle, the bound and the ratio after the RMSE
    dose_column, bound_columns = (["dose (e/A^2)"], ["CRB (A)", "RMSE / CRB"]) if doses else ([], [])
    projection_columns = ["proj. PSNR (dB)", "proj. SSIM"] if projected else []
    head = ["particle", *dose_column, "method", "atoms", "TPR", "FPR", "RMSE (A)", *bound_columns]
    head += ["species acc.", "SSIM", *projection_columns, "time (s)"]
    mean_head = [*dose_column, "method", "TPR", "FPR", "SSIM", *projection_columns]
    for scheme in dict.fromkeys(r.scheme for r in rows):
        picked = [r for r in rows if r.scheme == scheme]
        lines += [f"### Tilts {picked[0].tilt} ({scheme})", "", _table_row(head), "|" + "---|" * len(head)]
        for r in picked:
            dose = [_fmt_dose(r.dose)] if doses else []
            bound = [_fmt(r.crb, 4), _fmt(r.rmse_over_crb, 2)] if doses else []
            projection = [_fmt(r.projection_psnr, 2), _fmt(r.projection_ssim, 3)] if projected else []
            cells = [r.particle, *dose, r.method, r.n_true, _fmt(r.tpr), _fmt(r.fpr), _fmt(r.rmse, 3), *bound]
            cells += [_fmt(r.species_accuracy, 3), _fmt(r.ssim, 3), *projection, f"{r.seconds:.0f}"]
            lines.append(_table_row(cells))
        lines += ["", "Mean over particles:", "", _table_row(mean_head), "|" + "---|" * len(mean_head)]
        for dose in dict.fromkeys(r.dose for r in picked):
            for method in methods:
                mine = [r for r in picked if r.method == method and r.dose == dose]
                if mine:
                    cells = [*([_fmt_dose(dose)] if doses else []), method, _fmt(_mean(r.tpr for r in mine))]
                    cells += [_fmt(_mean(r.fpr for r in mine)), _fmt(_mean(r.ssim for r in mine), 3)]
                    if projected:
                        cells += [_fmt(_mean(r.projection_psnr for r in mine), 2)]
                        cells += [_fmt(_mean(r.projection_ssim for r in mine), 3)]
                    lines.append(_table_row(cells))
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


def _fmt_dose(dose: Optional[float]) -> str:
    return "n/a" if dose is None else f"{dose:g}"


def _table_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def row_summary(row: Row) -> str:
    """One line of a row for the progress log."""
    projected = ""
    if row.projection_psnr is not None:
        projected = f" held-out PSNR {row.projection_psnr:.2f} dB SSIM {_fmt(row.projection_ssim, 3)}"
    bound = "" if row.crb is None else f" CRB {row.crb:.4f}"
    return (
        f"TPR {_fmt(row.tpr)} FPR {_fmt(row.fpr)} RMSE {_fmt(row.rmse, 3)}{bound} SSIM {_fmt(row.ssim, 3)}{projected} "
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

    plt = pyplot()
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
    return save_figure(fig, path)


def plot_bars(rows: List[Row], path: Path) -> Path:
    """Bar charts of TPR, FPR and SSIM (and, with a hold-out, the held-out projections' PSNR and
    SSIM) per particle and method, one row of panels per tilt scheme (the paper's Figure 4); a
    method without a score has no bar."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_projections(measured: np.ndarray, modelled: Dict, pixel_size: float, path: Path, title: str = "") -> Path:
    """A held-out projection as measured and as each method models it, on one grey scale (the
    measured projection's range), with each residual below its model.

    Args:
        measured: (H, W) the measured projection, data units.
        modelled: method name -> (H, W) its model of it, data units.
        pixel_size: A.
    """
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_scores(rows: List[Row], figures: Path) -> Path:
    """The scores' figure of a results set in ``figures``: ``dose.png`` (:func:`plot_dose`) when its
    rows have doses, else ``bars.png`` (:func:`plot_bars`)."""
    if _has_doses(rows):
        return plot_dose(rows, Path(figures) / "dose.png")
    return plot_bars(rows, Path(figures) / "bars.png")


def plot_dose(rows: List[Row], path: Path) -> Path:
    """TPR, FPR and RMSE against dose (log axis), one colour per method, one row of panels per
    particle (and tilt scheme, when there are several); the RMSE panel shows the case's
    Cramer-Rao bound as a dashed black line. Rows without a dose are left out."""
    plt = pyplot()
    rows = [r for r in rows if r.dose is not None]
    schemes = list(dict.fromkeys(r.scheme for r in rows))
    panels = [(p, s) for p in dict.fromkeys(r.particle for r in rows) for s in schemes]
    methods = list(dict.fromkeys(r.method for r in rows))
    colours = {m: f"C{k}" for k, m in enumerate(methods)}
    fig, axes = plt.subplots(len(panels), 3, figsize=(13, 3.2 * len(panels)), squeeze=False, constrained_layout=True)
    for i, (particle, scheme) in enumerate(panels):
        mine = sorted((r for r in rows if r.particle == particle and r.scheme == scheme), key=lambda r: r.dose)
        name = particle if len(schemes) == 1 else f"{particle}, {scheme}"
        for j, (key, label) in enumerate((("tpr", "TPR"), ("fpr", "FPR"), ("rmse", "RMSE (A)"))):
            ax = axes[i, j]
            for method in methods:
                points = [(r.dose, getattr(r, key)) for r in mine if r.method == method and getattr(r, key) is not None]
                if points:
                    ax.plot(*zip(*points), "o-", color=colours[method], label=method)
            if key == "rmse":
                bound = sorted({(r.dose, r.crb) for r in mine if r.crb is not None})
                if bound:
                    ax.plot(*zip(*bound), "k--", label="CRB")
                ax.set_yscale("log")
            else:
                ax.set_ylim(-0.02, 1.02)
            ax.set_xscale("log")
            ax.set(title=f"{label}, {name}", xlabel="dose (e/A^2)")
        axes[i, 2].legend(fontsize=8)
    return save_figure(fig, path)


def plot_weight_histograms(weights_by_method: Dict, path: Path) -> Path:
    """Histograms of the learned log-weights of matched atoms by their true species, one panel per
    method (the ablation's species separation). ``weights_by_method``: name -> (weights (M,),
    species (M,))."""
    plt = pyplot()
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
    return save_figure(fig, path)
