"""A trained model's report figure: measured vs modelled projection, residual, the atoms by species,
their weights and their positional uncertainties, and per projection its solved shift, its
background and how well the model fits it.

The comparison's tables and figures are in :mod:`atomsplat.benchmark.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

# Colour of atoms without a species ("X"), whose Jmol colour (red) would read as an error.
UNLABELLED = (0.55, 0.55, 0.55)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures are written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 80) -> Path:
    """Write ``fig`` to ``path`` (format by its suffix; raster formats at ``dpi``), its folder made
    if missing, close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def species_colour(symbol: str) -> tuple:
    """The Jmol colour of an element (ase.data.colors), grey for the unlabelled "X"."""
    from ase.data import atomic_numbers
    from ase.data.colors import jmol_colors

    number = atomic_numbers.get(symbol, 0)
    return UNLABELLED if number == 0 else tuple(float(c) for c in jmol_colors[number])


def species_order(symbols) -> list:
    """The species present in ``symbols``, lightest element first."""
    from ase.data import atomic_numbers

    return sorted(set(symbols), key=lambda s: atomic_numbers.get(s, 0))


def species_boundaries(weights: np.ndarray, symbols: np.ndarray) -> list:
    """Weights that separate species of successive atomic number: for each pair, the geometric
    mean of the largest weight of the lighter and the smallest of the heavier species (the split of
    1-D k-means of log-weight, :func:`atomsplat.analysis.species.label_by_weight`, lies between them).
    Empty for fewer than two species."""
    order = species_order(symbols)
    bounds = []
    for light, heavy in zip(order, order[1:]):
        bounds.append(float(np.sqrt(weights[symbols == light].max() * weights[symbols == heavy].min())))
    return bounds


def plot_report(model, atoms, truth_path: Optional[Path], path: Path, slab: float = 1.5) -> Path:
    """Write :func:`report_figure` to ``path`` (PNG, or PDF / SVG by its suffix) and return the path."""
    return save_figure(report_figure(model, atoms, truth_path, slab), path)


def report_figure(model, atoms, truth_path: Optional[Path] = None, slab: float = 1.5):
    """The report of a trained ``model`` and its exported ``atoms`` (:func:`atomsplat.export.atoms_from_model`):
    a matplotlib figure of 2 x 3 panels over 4 (16 x 15 inches), with ``truth_path`` the true atoms
    (ase-readable) or None.

    Top: the measured projection nearest to 0 degrees, the model's projection of that view, their
    difference. Bottom: the atoms within ``slab`` A of the central z = 0 plane (sample frame) in
    their species' Jmol colours, with missed true atoms and unmatched found atoms marked when the
    true atoms are known; the histogram of the atoms' weights (log scale) by species, with the
    weights that split the species and the count of each (and the true count when known); the
    Cramer-Rao positional uncertainties of x, y, z when the run finished (else a note). Last row,
    against each projection's tilt angle (:func:`projection_fit`), projections held out of training
    drawn open: the solved detector shift in x and y; the background's mean level; the factor by
    which the atoms best fit each projection, with its deviation (a dose that drifts between
    projections scatters it beyond them), and the solved dose factors (gains) where the model has
    them; and the misfit (for counts
    the Pearson chi-square per pixel, 1 where the model explains a projection to its noise;
    otherwise the residual's RMS), which shows a projection the model cannot take.
    """
    import ase.io

    plt = pyplot()
    series = model.series
    k = int(np.argmin(np.abs(series.tilt_angles)))
    _, height, width = series.shape
    modelled = model.render_projections([k])[0].cpu().numpy()
    measured = series.projections[k]
    extent = np.array([-width, width, height, -height]) * series.pixel_size / 2.0
    truth = ase.io.read(truth_path) if truth_path is not None else None

    fig = plt.figure(figsize=(16, 15), layout="constrained")
    upper, lower = fig.subfigures(2, 1, height_ratios=[2, 1])
    axes = upper.subplots(2, 3)
    top = float(measured.max())
    for ax, image, title in (
        (axes[0, 0], measured, f"measured, tilt {series.tilt_angles[k]:.0f} deg"),
        (axes[0, 1], modelled, f"model ({len(atoms)} atoms)"),
    ):
        shown = ax.imshow(image, cmap="gray", vmin=0, vmax=top, extent=extent)
        ax.set(title=title, xlabel="x (A)", ylabel="y (A)")
    upper.colorbar(shown, ax=axes[0, :2], shrink=0.8, label="projection (data units)")
    residual = measured - modelled
    bound = float(np.abs(residual).max())
    shown = axes[0, 2].imshow(residual, cmap="RdBu_r", vmin=-bound, vmax=bound, extent=extent)
    axes[0, 2].set(title="measured - model", xlabel="x (A)", ylabel="y (A)")
    upper.colorbar(shown, ax=axes[0, 2], shrink=0.8)

    _plot_slab(axes[1, 0], atoms, truth, slab)
    _plot_weights(axes[1, 1], atoms, truth)
    _plot_uncertainty(axes[1, 2], atoms)
    _plot_projections(lower.subplots(1, 4), projection_fit(model))
    return fig


def projection_fit(model) -> dict:
    """Per projection of ``model``'s series (N): "tilt" (N,) deg; "trained" (N,) bool; "shifts" (N, 2)
    A, the solved detector shifts, or None where none are solved; "background" (N,) data units, the
    background's mean over the field, or None without one; "scale" and "scale_deviation" (N,), the
    factor by which the atoms (at gain 1) best fit each projection and its standard deviation
    (:func:`atomsplat.model.corrections.atom_scales`); "gains" (N,) the solved dose factors, or None
    where none are solved; "misfit" (N,) and its "misfit_label": for a
    likelihood data term the Pearson chi-square per pixel, mean((measured - model)^2 / variance),
    about 1 where the model explains the projection to its noise, else the residual's RMS, data
    units."""
    import torch

    from atomsplat.model.corrections import atom_scales

    series, count = model.series, len(model.series.tilt_angles)
    with torch.no_grad():
        rendered = [model.render(views) for views in model.series_views(torch.arange(count)).split(8)]
        modelled = torch.cat([part["projection"] for part in rendered]).cpu().double()
        atoms = torch.cat([part["atoms"] for part in rendered]).cpu().double()
        measured = torch.from_numpy(np.asarray(series.projections, dtype=np.float64))
        scales, deviations = atom_scales(atoms, modelled - atoms, measured, model.noise.smooth)
        gains = None
        if model.corrections.solves_gains:  # the atoms were rendered at their gains: factors at gain 1
            gains = model.corrections.gains.detach().cpu().double()
            scales, deviations = scales * gains, deviations * gains
        residual = measured - modelled
        if model.noise.is_likelihood:
            misfit = (residual.square() / model.noise.variance(modelled)).mean(dim=(1, 2))
            label = "Pearson chi-square per pixel"
        else:
            misfit = residual.square().mean(dim=(1, 2)).sqrt()
            label = "residual RMS (data units)"
        corrections = model.corrections
        shifts = corrections.params["view_shifts"].detach().cpu().numpy() if corrections.solves_shifts else None
        level = (modelled - atoms).mean(dim=(1, 2)).numpy() if corrections.has_background else None
    trained = np.zeros(count, dtype=bool)
    trained[model.train_indices.cpu().numpy()] = True
    return {
        "tilt": np.asarray(series.tilt_angles, dtype=np.float64),
        "trained": trained,
        "shifts": shifts,
        "background": level,
        "scale": scales.numpy(),
        "scale_deviation": deviations.numpy(),
        "gains": None if gains is None else gains.numpy(),
        "misfit": misfit.numpy(),
        "misfit_label": label,
    }


def _plot_projections(axes, fit: dict) -> None:
    """Four panels against the tilt angle: shifts (pm), background level, the atoms' scale, misfit
    (:func:`projection_fit`)."""
    tilt, trained = fit["tilt"], fit["trained"]

    def draw(ax, values, colour, label, errors=None):
        for pick, style, name in (
            (trained, {"ms": 4}, label),
            (~trained, {"ms": 6, "mfc": "none"}, f"{label}, held out"),
        ):
            if pick.any():
                bars = None if errors is None else errors[pick]
                ax.errorbar(
                    tilt[pick], values[pick], yerr=bars, fmt="o", color=colour, label=name, elinewidth=0.8, **style
                )

    def note(ax, title, text):
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xticks=[], yticks=[])

    if fit["shifts"] is None:
        note(axes[0], "shift per projection", "no shifts solved:\nthe projections held as given")
    else:
        for axis, name, colour in ((0, "x", "tab:blue"), (1, "y", "tab:orange")):
            draw(axes[0], 100.0 * fit["shifts"][:, axis], colour, name)
        axes[0].axhline(0.0, color="0.7", lw=0.8, zorder=0)
        axes[0].set(title="shift per projection", xlabel="tilt (deg)", ylabel="solved shift (pm)")
        axes[0].legend(loc="upper right", fontsize=8)
    if fit["background"] is None:
        note(axes[1], "background per projection", "no background fitted")
    else:
        draw(axes[1], fit["background"], "tab:gray", "mean level")
        axes[1].set(title="background per projection", xlabel="tilt (deg)", ylabel="mean over the field (data units)")
    scale, deviation = fit["scale"], fit["scale_deviation"]
    spread, noise = 100.0 * float(np.std(scale[trained])), 100.0 * float(np.sqrt(np.mean(deviation[trained] ** 2)))
    draw(axes[2], scale, "tab:green", "best factor", deviation)
    axes[2].axhline(1.0, color="0.7", lw=0.8, zorder=0)
    title = f"atoms' scale per projection\nspread {spread:.1f} %, noise {noise:.1f} %"
    if fit["gains"] is not None:
        axes[2].plot(tilt, fit["gains"], "x", color="black", ms=5, label="solved dose factor")
        axes[2].legend(loc="lower right", fontsize=8)
    axes[2].set(title=title, xlabel="tilt (deg)", ylabel="factor on the atoms")
    draw(axes[3], fit["misfit"], "tab:red", "misfit")
    if fit["misfit_label"].startswith("Pearson"):
        axes[3].axhline(1.0, color="0.7", lw=0.8, zorder=0)
    axes[3].set(title="misfit per projection", xlabel="tilt (deg)", ylabel=fit["misfit_label"])


def _plot_slab(ax, atoms, truth, slab: float) -> None:
    """The atoms with |z| < slab in their species' colours; missed and false atoms when ``truth`` is known."""
    from atomsplat.analysis.matching import match_atoms

    found = atoms.positions
    in_slab = np.abs(found[:, 2]) < slab
    symbols = np.array(atoms.get_chemical_symbols())
    for symbol in species_order(symbols):
        pick = in_slab & (symbols == symbol)
        ax.scatter(
            found[pick, 0],
            found[pick, 1],
            s=45,
            color=species_colour(symbol),
            edgecolors="k",
            linewidths=0.5,
            label=f"{symbol} ({int(pick.sum())})",
        )
    if truth is not None:
        true = truth.positions
        pred_idx, true_idx, _ = match_atoms(found, true)
        missed = np.setdiff1d(np.arange(len(true)), true_idx)
        false = np.setdiff1d(np.arange(len(found)), pred_idx)
        pick = missed[np.abs(true[missed, 2]) < slab]
        ax.scatter(true[pick, 0], true[pick, 1], marker="x", c="k", s=60, label=f"missed ({len(missed)} in all)")
        pick = false[np.abs(found[false, 2]) < slab]
        ax.scatter(
            found[pick, 0],
            found[pick, 1],
            marker="s",
            facecolors="none",
            edgecolors="r",
            s=90,
            label=f"false ({len(false)} in all)",
        )
    ax.set(title=f"atoms with |z| < {slab:g} A", xlabel="x (A)", ylabel="y (A)", aspect="equal")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)  # beside the atoms


def _plot_weights(ax, atoms, truth) -> None:
    """Histogram of the weights (log scale), stacked by species, with the species split."""
    from matplotlib.ticker import LogFormatter

    weights = atoms.arrays["weight"]
    symbols = np.array(atoms.get_chemical_symbols())
    unit = atoms.info.get("weight_unit", "data units A^2").split(" (")[0]
    order = species_order(symbols)
    true_symbols = truth.get_chemical_symbols() if truth is not None else None
    labels = []
    for symbol in order:
        label = f"{symbol}: {int((symbols == symbol).sum())}"
        if true_symbols is not None and symbol != "X":
            label += f" (true {true_symbols.count(symbol)})"
        labels.append(label)
    if len(weights):
        low, high = float(weights.min()), float(weights.max())
        bins = np.geomspace(low / 1.05, high * 1.05, 41) if high > low else np.geomspace(low / 1.5, low * 1.5, 11)
        ax.hist(
            [weights[symbols == s] for s in order],
            bins=bins,
            stacked=True,
            color=[species_colour(s) for s in order],
            edgecolor="k",
            linewidth=0.4,
            label=labels,
        )
        for n, bound in enumerate(species_boundaries(weights, symbols)):
            ax.axvline(bound, color="k", linestyle="--", linewidth=1, label="species split" if n == 0 else None)
        ax.set_xscale("log")
        for axis_ticks in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis_ticks(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))  # 200, 300, not 2x10^2
        ax.legend(loc="upper left", fontsize=8)
    ax.set(title=f"atom weights ({len(weights)} atoms)", xlabel=f"weight ({unit})", ylabel="atoms")


def _plot_uncertainty(ax, atoms) -> None:
    """Histograms of the Cramer-Rao standard deviations of x, y, z, or a note when there are none."""
    uncertainty = atoms.arrays.get("uncertainty")
    if uncertainty is None or len(uncertainty) == 0:
        ax.text(
            0.5,
            0.5,
            "no positional uncertainties:\nthe run did not reach its final pass",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set(title="positional uncertainty (Cramer-Rao)", xticks=[], yticks=[])
        return
    finite = np.isfinite(uncertainty).all(axis=1)  # an atom no view sees has infinite deviations
    top = float(uncertainty[finite].max()) if finite.any() else 1.0
    bins = np.linspace(0.0, top * 1.05, 41)
    for axis, name, colour in zip(range(3), "xyz", ("tab:blue", "tab:orange", "tab:green")):
        values = uncertainty[finite, axis]
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            linewidth=1.5,
            color=colour,
            label=f"{name}: median {np.median(values):.3f} A",
        )
    unbounded = f", {int((~finite).sum())} unbounded" if not finite.all() else ""
    lower = ", own blocks: lower bounds" if atoms.info.get("uncertainty_kind") == "own block" else ""
    ax.set(
        title=f"positional uncertainty (Cramer-Rao{lower}{unbounded})", xlabel="standard deviation (A)", ylabel="atoms"
    )
    ax.legend(loc="upper right", fontsize=8)
