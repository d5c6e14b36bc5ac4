"""How many atoms? The tied search's likelihood over counts, and the kink where it stops gaining.

    python benchmarks/count_scan.py DATA [--name NAME] [--slab 8] [--factors 0.8 0.9 1.0 1.1 1.2]
        [--steps 2800] [--blur 1.0] [--blur-steps 2400]

DATA: a count series with ground_truth.xyz. For every factor F the tied search
(``tied_search.TiedFit``, the ``sirt-blur`` case: the strongest SIRT maxima as the start, every
Gaussian of one weight, the positions fitted under a blur falling to 0) runs at the one-atom weight
``w = S / (F N)``, S the mean signal of a training projection (counts x A^2 above the pedestal, the
median of the outer 8 columns), N the true atoms' count: F is the count the whole particle would
have if each of its atoms carried w. Below the atoms' count every added Gaussian fills a hole and
buys many nats; above it, a share of an atom's counts and little. The kink is read off by a
continuous two-line fit of -log L against the Gaussians' count (:func:`kink`), and the estimate
``S / w`` at the kink uses the data alone; the truth only places the grid of factors and scores
the estimate.

``--hardcore D`` starts from the strongest maxima at least D A apart (the greedy rule of
:func:`atomsplat.analysis.tracing.select_separated`), ``--repel R`` adds the soft minimum distance of
``tied_search.TiedFit`` (``--stiffness`` x (R - d)^2 nats per view for each pair closer than R A)
to the search: the prior that atoms keep their distance.

``--slab H`` fits only the columns within H A of the tilt axis (x = 0): a single-axis series is a
stack of independent slices, so those columns are the exact projections of the slab ``|x| < H``,
at a fraction of the cost. Atoms just outside its faces send their tails (core and halo) into it,
and each needs a Gaussian of its own: the fit holds ``S_band / w`` Gaussians, S_band the signal of
the columns within H + :data:`FACE_MARGIN` A, the strongest maxima within 0.5 A more; the pedestal
is the whole series' (the slab's outer columns lie in the particle).

Every factor's row and end (the fitted positions, XYZ of element X: a ``--start`` for
``information_limit.py``) are kept in results/count_scan/<name>/ (two processes may share a name and
split the factors; a rerun skips the rows it has); writes docs/benchmarks/count_scan_<name>.json and
docs/figures/count_scan_<name>.png from all rows of the name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from scipy.spatial import cKDTree
from start_basin import sirt_start
from tied_search import TiedFit, border_pedestal, mean_signal, search, write_positions

from atomsplat.analysis.matching import evaluate
from atomsplat.analysis.tracing import select_separated
from atomsplat.data.dataparser import split_indices
from atomsplat.data.formats import read_tilt_series

ROOT = Path(__file__).resolve().parents[1]
FACE_MARGIN = 1.5  # A: atoms this far outside a slab's faces reach into it (their halo: about 1 A wide)
MAXIMA_REACH = 0.5  # A: maxima this far beyond that band may start a Gaussian
SCORE_INSET = 2.0  # A: TPR / FPR are scored within the slab less this, away from its cut faces
GROWTH_GAP = 1.0  # A: a sequential scan's new Gaussians start at maxima this far from the fitted ones


def central_slab(series, half: float):
    """The series cut to the columns within ``half`` A of the tilt axis: the projections of the slab
    ``|x| < half`` (A, sample frame), rounded to whole pixels; returns (series, the slab's half-width
    in A)."""
    if series.tilt_axis_angle != 0 or np.any(series.shifts_or_zeros() != 0):
        raise ValueError("a slab needs the tilt axis along the detector's x and no shifts")
    columns = int(round(half / series.pixel_size))
    middle = series.projections.shape[2] // 2
    if columns < 1 or columns > middle:
        raise ValueError(f"slab half-width {half} A: outside 1 pixel to half the detector's width")
    cut = np.ascontiguousarray(series.projections[:, :, middle - columns : middle + columns])
    return dataclasses.replace(series, projections=cut), columns * series.pixel_size


def kink(counts: np.ndarray, values: np.ndarray) -> dict:
    """The continuous two-line fit ``c + s1 min(K - b, 0) + s2 max(K - b, 0)`` of ``values``
    (nats) against ``counts`` K, its breakpoint b scanned over 2,001 points between the extreme
    counts: b and the slopes s1, s2 (nats per Gaussian; negative: a Gaussian more lowers -log L)."""
    counts, values = np.asarray(counts, float), np.asarray(values, float)
    best = None
    for b in np.linspace(counts.min(), counts.max(), 2001):
        design = np.stack([np.ones_like(counts), np.minimum(counts - b, 0), np.maximum(counts - b, 0)], 1)
        coef, *_ = np.linalg.lstsq(design, values, rcond=None)
        error = float(np.sum((design @ coef - values) ** 2))
        if best is None or error < best[0]:
            best = (error, b, coef)
    error, b, coef = best
    return {
        "breakpoint": float(b),
        "slope_below": float(coef[1]),
        "slope_above": float(coef[2]),
        "rms": (error / len(counts)) ** 0.5,
    }


def grown(previous: np.ndarray, maxima: np.ndarray, count: int) -> np.ndarray:
    """(count, 3) A: ``previous`` Gaussians and, after them, the strongest ``maxima`` at least
    :data:`GROWTH_GAP` A from every one of them (a sequential scan's next start)."""
    far = cKDTree(previous).query(maxima)[0] >= GROWTH_GAP
    added = maxima[far][: count - len(previous)]
    if len(previous) + len(added) < count:
        raise ValueError(f"{count} Gaussians, but only {len(added)} SIRT maxima clear of the {len(previous)} fitted")
    return np.concatenate([previous, added])


def run_factor(
    series, train, maxima, truth, signal: float, atoms: int, factor: float, args, half, previous=None
) -> tuple:
    """One tied search at the weight of ``factor`` x ``atoms`` atoms carrying ``signal``: from the
    strongest ``maxima``, or (``previous``: an earlier factor's fit) from its end grown by
    :func:`grown`, with its width and halo, over ``args.next_steps`` steps. Returns (row, fit)."""
    weight = signal / (factor * atoms)
    fitted, band, pedestal = series, series, border_pedestal(series, train)
    inner = np.ones(len(truth), bool)
    if half is not None:
        fitted, half = central_slab(series, half)
        band, reach = central_slab(series, half + FACE_MARGIN)
        maxima = maxima[np.abs(maxima[:, 0]) < reach + MAXIMA_REACH]
        inner = np.abs(truth[:, 0]) < half - SCORE_INSET
    if args.hardcore > 0:  # the strongest maxima at least that far apart, as atoms are
        maxima = maxima[select_separated(maxima, -np.arange(len(maxima)), args.hardcore)]
    band_signal = mean_signal(band, train, pedestal)
    count = int(round(band_signal / weight))
    if count > len(maxima):
        raise ValueError(f"factor {factor}: {count} Gaussians, but only {len(maxima)} SIRT maxima")
    steps, blur, blur_steps = args.steps, args.blur, args.blur_steps
    if previous is None:
        start = maxima[:count]
    else:
        start = grown(previous.positions.detach().numpy(), maxima, count)
        steps, blur, blur_steps = args.next_steps, args.next_blur, args.next_blur_steps
    fit = TiedFit(fitted, train, start, args.repel, args.stiffness, pedestal=pedestal, weight=band_signal / count)
    if previous is not None:
        with torch.no_grad():
            fit.log_sigma.copy_(previous.log_sigma)
            for key, value in previous.shape.params.items():
                fit.shape.params[key].copy_(value)
    began = time.perf_counter()
    search(fit, steps, blur, blur_steps)
    positions = fit.positions.detach().numpy()
    keep = np.ones(len(positions), bool) if half is None else np.abs(positions[:, 0]) < half - SCORE_INSET
    score = evaluate(positions[keep], truth[inner])
    row = {
        "factor": factor,
        "gaussians": count,
        "weight": round(fit.weight, 4),
        "negative_log_likelihood": round(fit.negative_log_likelihood(), 1),
        "width": round(float(fit.log_sigma.detach().exp()), 4),
        "tpr": round(score.tpr, 4),
        "fpr": round(score.fpr, 4),
        "seconds": round(time.perf_counter() - began, 1),
    }
    print(f"  factor {factor}: {count} Gaussians, -log L {row['negative_log_likelihood']:.1f}, "
          f"{score.tpr:.3f} / {score.fpr:.3f}, {row['seconds'] / 60:.1f} min", flush=True)  # fmt: skip
    return row, fit


def plot(rows: list, fitted: dict, atoms_scale: float, path: Path, title: str) -> None:
    from atomsplat.report import pyplot, save_figure

    counts = np.array([row["gaussians"] for row in rows], float)
    values = np.array([row["negative_log_likelihood"] for row in rows])
    low = values.min()
    b, s1, s2 = fitted["breakpoint"], fitted["slope_below"], fitted["slope_above"]
    line = np.linspace(counts.min(), counts.max(), 200)
    shape = np.minimum(line - b, 0) * s1 + np.maximum(line - b, 0) * s2
    offset = np.mean(values - (np.minimum(counts - b, 0) * s1 + np.maximum(counts - b, 0) * s2))
    fig, ax = pyplot().subplots(figsize=(6.0, 4.0))
    ax.plot(counts / atoms_scale, values - low, "o", label="tied search's end")
    ax.plot(line / atoms_scale, shape + offset - low, "-", label=f"two lines, kink at {b / atoms_scale:.3f}")
    ax.axvline(1.0, color="0.5", ls=":", label="the atoms' count")
    ax.set(xlabel="Gaussians / atoms", ylabel="-log L above the lowest (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--name", default=None)
    parser.add_argument("--slab", type=float, default=None, help="A: fit only the slab |x| < SLAB (default: all)")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.8, 0.9, 1.0, 1.1, 1.2])
    parser.add_argument("--steps", type=int, default=2800)
    parser.add_argument("--blur", type=float, default=1.0, help="A: the starting blur")
    parser.add_argument("--blur-steps", type=int, default=2400, help="steps over which the blur falls to 0")
    parser.add_argument("--hardcore", type=float, default=0.0, help="A: start maxima at least this far apart")
    parser.add_argument("--repel", type=float, default=0.0, help="A: soft minimum distance of the Gaussians (0: none)")
    parser.add_argument("--stiffness", type=float, default=200.0, help="nats per view per A^2 of the overlap")
    parser.add_argument("--sequential", action="store_true", help="each factor from the last one's end, ascending")
    parser.add_argument("--next-steps", type=int, default=800, help="--sequential: steps after the first factor")
    parser.add_argument("--next-blur", type=float, default=0.5, help="A: --sequential: blur after the first factor")
    parser.add_argument("--next-blur-steps", type=int, default=600)
    args = parser.parse_args()
    name = args.name or args.data.name
    series = read_tilt_series(args.data)
    truth = ase.io.read(args.data / "ground_truth.xyz")
    train = split_indices(len(series.projections), "train", 10)
    signal = mean_signal(series, train, border_pedestal(series, train))
    keep = ROOT / "results" / "count_scan" / name
    keep.mkdir(parents=True, exist_ok=True)
    maxima, fit = None, None
    for factor in sorted(args.factors) if args.sequential else args.factors:
        row_path = keep / f"factor{factor:g}.json"
        if row_path.exists():
            if args.sequential:
                raise SystemExit(f"{row_path} exists: a sequential scan runs whole, under a new --name")
            continue
        if maxima is None:  # every SIRT maximum, strongest first
            maxima = sirt_start(args.data, truth, 3 * len(truth)).positions
        row, end = run_factor(series, train, maxima, truth.positions, signal, len(truth), factor, args, args.slab, fit)
        fit = end if args.sequential else None
        write_positions(keep / f"factor{factor:g}.xyz", end.positions.detach().numpy())
        row_path.write_text(json.dumps(row) + "\n")
    rows = sorted((json.loads(path.read_text()) for path in keep.glob("factor*.json")), key=lambda row: row["factor"])
    report = {
        "data": str(args.data),
        "slab_half_width": args.slab,
        "steps": args.steps,
        "blur": args.blur,
        "blur_steps": args.blur_steps,
        **({"hardcore": args.hardcore} if args.hardcore > 0 else {}),
        **({"repel": args.repel, "stiffness": args.stiffness} if args.repel > 0 else {}),
        **(
            {"sequential": {"steps": args.next_steps, "blur": args.next_blur, "blur_steps": args.next_blur_steps}}
            if args.sequential
            else {}
        ),
        "atoms": len(truth),
        "signal": round(signal, 1),
    }
    out = ROOT / "docs" / "benchmarks" / f"count_scan_{name}.json"
    if len(rows) < 3:  # two lines need three counts at least: the searches alone
        print(f"{name}: {len(rows)} factor(s), no kink fitted (it needs three)", flush=True)
        out.write_text(json.dumps({**report, "rows": rows}, indent=1) + "\n")
        return
    counts = np.array([row["gaussians"] for row in rows], float)
    fitted = kink(counts, [row["negative_log_likelihood"] for row in rows])
    # the Gaussians' count at the kink, as a factor of the atoms' (the grid's scale: K = F x atoms' share)
    scale = float(np.mean(counts / [row["factor"] for row in rows]))
    estimate = fitted["breakpoint"] / scale
    print(
        f"{name}: kink at {estimate:.3f} x the atoms' count ({estimate * len(truth):.0f} for {len(truth)}); "
        f"{-fitted['slope_below']:.2f} nats per Gaussian below, {-fitted['slope_above']:.2f} above",
        flush=True,
    )
    report["kink"] = {**{key: round(value, 4) for key, value in fitted.items()}, "factor": round(estimate, 4)}
    report["count_estimate"] = round(estimate * len(truth))
    out.write_text(json.dumps({**report, "rows": rows}, indent=1) + "\n")
    plot(
        rows,
        fitted,
        scale,
        ROOT / "docs" / "figures" / f"count_scan_{name}.png",
        f"{name}: the tied search over counts",
    )


if __name__ == "__main__":
    main()
