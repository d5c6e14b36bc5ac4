"""Where is the likelihood's own maximum? The tied model fitted from the true atoms, and a series drawn from it.

    python benchmarks/information_limit.py DATA [--name NAME] [--slab 8] [--redraw DIR] [--start XYZ]
        [--repel 2.1 --stiffness 200] [--iterations 25] [--rounds 4] [--uncertainties]

DATA: a count series with ground_truth.xyz. The tied model (``tied_search.TiedFit``: every Gaussian
of one weight, the mean signal of a training projection over the atoms' count, one width and halo,
each view's pedestal solved) is placed at the true atoms with the width and halo held at
``--width`` and ``--halo`` (by default those fitted from the true atoms of the 9 nm series at 8e3,
docs/benchmarks/tied_search_si9nm_d8000_truth.json), and its positions alone are fitted to all
training projections (every 10th held out) by L-BFGS, full batch and deterministic, ``--rounds``
rounds of ``--iterations`` iterations. It ends at the likelihood's maximum in the truth's basin:
no search can place these Gaussians better by the likelihood, so its TPR / FPR is what a perfect
search of this model would give, and its distances from the atoms are the estimator's own error
(about half the number of fitted coordinates, in nats, below the truth's -log L when the model is
right).

``--redraw DIR`` first writes to DIR the series drawn anew from this model at the true atoms
(Poisson counts of the same expectation's mean signal over a pedestal of 1 count, noise seed 7,
DATA's geometry and ground truth) and fits that: the same atoms with no model error, so the ends on
the two series separate what the Gaussians' shape costs from what the counts cannot tell.

``--repel R`` adds the soft minimum distance of ``tied_search.TiedFit`` (``--stiffness`` x (R - d)^2
nats per view for every pair closer than R A): the prior that no two atoms come closer than about
their bond (the amorphous Si atoms are at least 2.21 A apart), which makes the fit a maximum a
posteriori. ``--start`` fits from other positions (e.g. a tied search's end) instead of the truth,
each Gaussian then carrying the mean signal over their count (whole particle) as in that search.

``--slab H`` fits only the columns within H A of the tilt axis (``count_scan.central_slab``), with
the true atoms up to :data:`count_scan.FACE_MARGIN` A outside its faces, scored 2 A inside them.

``--uncertainties`` (from the truth, whole particle) then computes the positional deviations that
the method would export at the end (:func:`atomsplat.model.refinement.position_uncertainties` with
the model's default ``full_uncertainty_limit``: above it each atom's own block scaled by a band's
marginal ratio) and, for comparison, the own blocks alone, and records per axis the standard
deviation of the errors over each (the issue's calibration criterion: 0.8-1.25).

Writes docs/benchmarks/information_limit_<name>.json: per round TPR / FPR, -log L (the data term
alone) and, with ``--repel``, the prior's nats (the penalty over all training views: the MAP's
objective is their sum), the median and 95th percentile of the distance moved, the RMS error per
axis of the atoms scored (from the truth only) and the share of them with another Gaussian closer
than 2 A; and the end's positions as results/information_limit/<name>.xyz (element X).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import ase.io
import numpy as np
import tifffile
import torch
from count_scan import FACE_MARGIN, SCORE_INSET, central_slab
from scipy.spatial import cKDTree
from tied_search import TiedFit, border_pedestal, mean_signal, write_positions

from atomsplat.analysis.matching import evaluate
from atomsplat.data.dataparser import split_indices
from atomsplat.data.formats import read_tilt_series
from atomsplat.geometry import view_rotations
from atomsplat.model.atomsplat_model import AtomSplatModelConfig
from atomsplat.model.cloud import AtomCloud, AtomShape, series_views
from atomsplat.model.corrections import ViewCorrections
from atomsplat.model.losses import NoiseModel
from atomsplat.model.refinement import position_uncertainties

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HALO = 0.5706, (0.4105, 1.824)  # A; fraction, ratio: fitted from the 9 nm atoms at 8e3
REDRAW_SEED = 7
REDRAW_PEDESTAL = 1.0  # counts per pixel


def tied_at(
    series, train, positions: np.ndarray, weight: float, width: float, halo, pedestal: float, repel: float = 0.0,
    stiffness: float = 0.0,
) -> TiedFit:  # fmt: skip
    """The tied model at ``positions`` (K, 3) A, each Gaussian of ``weight``, width and halo held, the
    views' pedestals solved from ``pedestal`` (the whole series', as a slab's outer columns lie in
    the particle; ``repel``, ``stiffness``: the soft minimum distance of :class:`tied_search.TiedFit`)."""
    fit = TiedFit(series, train, positions, repel, stiffness, pedestal=pedestal, weight=weight)
    fraction, ratio = halo
    with torch.no_grad():
        fit.log_sigma.fill_(math.log(width))
        fit.shape.params["halo_logit"].fill_(math.log(fraction / (1.0 - fraction)))
        fit.shape.params["halo_log_excess"].fill_(math.log(ratio - 1.0))
    return fit


def rms_error(error: np.ndarray, rows: np.ndarray) -> list:
    """[x, y, z] the RMS of ``error`` (K, 3) A over the boolean ``rows``, A."""
    return [round(float(v), 4) for v in np.sqrt(np.mean(error[rows] ** 2, axis=0))]


def redraw(data: Path, out: Path, width: float, halo) -> None:
    """Write to ``out`` the series of ``data`` drawn anew from the tied model at its true atoms
    (module docstring); refuses to write into an existing folder."""
    if out.exists():
        raise SystemExit(f"{out} exists: --redraw writes a new folder")
    series = read_tilt_series(data)
    truth = ase.io.read(data / "ground_truth.xyz").positions
    train = split_indices(len(series.projections), "train", 10)
    pedestal = border_pedestal(series, train)
    weight = mean_signal(series, train, pedestal) / len(truth)
    fit = tied_at(series, train, truth, weight, width, halo, pedestal)
    with torch.no_grad():
        images = [
            fit.project(series_views(series, np.arange(k, min(k + 6, len(series.projections)))), 0.0).numpy()
            for k in range(0, len(series.projections), 6)
        ]
    expected = np.concatenate(images).astype(np.float64) + REDRAW_PEDESTAL
    counts = np.random.default_rng(REDRAW_SEED).poisson(expected)
    out.mkdir(parents=True)
    for path in data.iterdir():
        if path.name != "projections.tif":
            shutil.copy(path, out / path.name)
    tifffile.imwrite(out / "projections.tif", counts.astype(np.float32))


def calibration(series, train, positions: np.ndarray, truth: np.ndarray, weight: float, width: float, halo,
                pedestal: float) -> dict:  # fmt: skip
    """Per axis, the standard deviation of ``positions - truth`` (K, 3) A over the deviations that
    the method exports for atoms of ``weight``, ``width`` and ``halo`` at ``positions`` (and over
    their own blocks alone), the pixels' variances the model's expectation over ``pedestal``."""
    fraction, ratio = halo
    cloud = AtomCloud(torch.from_numpy(positions).float(), width, weight, shape=AtomShape(fraction, ratio))
    measured = torch.from_numpy(series.projections.astype(np.float32))
    noise = NoiseModel("poisson")
    corrections = ViewCorrections(
        torch.from_numpy(view_rotations(series.tilt_angles, series.tilt_axis_angle)).float(),
        torch.from_numpy(train), measured, background_degree=0, noise=noise,
    )  # fmt: skip
    corrections.background.fill_(pedestal)
    limit = AtomSplatModelConfig().full_uncertainty_limit
    result = {}
    for key, full_limit, band_limit in (("exported", limit, None), ("own_block", 0, 0)):
        began = time.perf_counter()
        args = (cloud, corrections, measured, series_views(series, train), noise)
        deviations, how = position_uncertainties(*args, full_limit=full_limit, band_limit=band_limit)
        z = (positions - truth) / deviations.numpy()
        result[key] = {
            "kind": how,
            "rms_deviation": rms_error(deviations.numpy(), np.ones(len(z), bool)),
            "error_over_deviation_std": [round(float(v), 3) for v in z.std(axis=0)],
            "seconds": round(time.perf_counter() - began, 1),
        }
        print(json.dumps({key: result[key]}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--name", default=None)
    parser.add_argument("--slab", type=float, default=None, help="A: fit only the slab |x| < SLAB (default: all)")
    parser.add_argument("--redraw", type=Path, default=None, help="redraw the series from the model into this folder")
    parser.add_argument("--width", type=float, default=WIDTH, help="A: the Gaussians' core width")
    parser.add_argument("--halo", type=float, nargs=2, default=HALO, help="the halo's fraction and width ratio")
    parser.add_argument("--start", type=Path, default=None, help="positions (XYZ, A) to fit from (default: the truth)")
    parser.add_argument("--repel", type=float, default=0.0, help="A: soft minimum distance of the Gaussians (0: none)")
    parser.add_argument("--stiffness", type=float, default=200.0, help="nats per view per A^2 of the overlap")
    parser.add_argument("--iterations", type=int, default=25, help="L-BFGS iterations per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--uncertainties", action="store_true", help="the exported deviations' calibration at the end")
    args = parser.parse_args()
    data = args.data
    if args.redraw is not None:
        redraw(data, args.redraw, args.width, args.halo)
        data = args.redraw
    name = args.name or data.name
    series = read_tilt_series(data)
    truth = ase.io.read(data / "ground_truth.xyz").positions
    train = split_indices(len(series.projections), "train", 10)
    pedestal = border_pedestal(series, train)
    weight = mean_signal(series, train, pedestal) / len(truth)
    fitted, half, reach = series, math.inf, math.inf
    if args.slab is not None:
        fitted, half = central_slab(series, args.slab)
        reach = half + FACE_MARGIN
    start = truth[np.abs(truth[:, 0]) < reach]
    first = start if args.start is None else ase.io.read(args.start).positions
    if args.start is not None and args.slab is None:  # the tied weight of its own count, as its search had
        weight *= len(truth) / len(first)
    fit = tied_at(fitted, train, first, weight, args.width, args.halo, pedestal, args.repel, args.stiffness)
    inner = np.abs(start[:, 0]) < half - SCORE_INSET
    scored = np.abs(first[:, 0]) < half - SCORE_INSET  # the Gaussians whose moves are recorded
    optimizer = torch.optim.LBFGS(
        [fit.positions], lr=1, max_iter=args.iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        total = fit.training_data_term() + len(train) * fit.overlap()  # the penalty is in nats per view
        total.backward()
        return total

    def row(round_: int, seconds: float) -> dict:
        positions = fit.positions.detach().numpy()
        keep = np.abs(positions[:, 0]) < half - SCORE_INSET
        score = evaluate(positions[keep], start[inner])
        moved = np.linalg.norm(positions - first, axis=1)[scored]
        nearest = cKDTree(positions).query(positions[scored], k=2)[0][:, 1]
        result = {
            "round": round_,
            "iterations": round_ * args.iterations,
            "tpr": round(score.tpr, 4),
            "fpr": round(score.fpr, 4),
            "negative_log_likelihood": round(fit.negative_log_likelihood(), 1),
            **({"prior": round(float(len(train) * fit.overlap().detach()), 1)} if args.repel > 0 else {}),
            "moved_median": round(float(np.median(moved)), 4),
            "moved_p95": round(float(np.percentile(moved, 95)), 4),
            "rms_xyz": None if args.start is not None else rms_error(positions - start, inner),
            "nearest_below_2A": round(float(np.mean(nearest < 2.0)), 4),
            "seconds": round(seconds, 1),
        }
        print(json.dumps(result), flush=True)
        return result

    began = time.perf_counter()
    rows = [row(0, 0.0)]
    for round_ in range(1, args.rounds + 1):
        optimizer.step(closure)
        rows.append(row(round_, time.perf_counter() - began))
    if args.uncertainties:
        if args.start is not None or args.slab is not None:
            raise SystemExit("--uncertainties needs the whole particle fitted from the truth (errors by atom)")
        end = fit.positions.detach().numpy()
        rows[-1]["calibration"] = calibration(series, train, end, truth, weight, args.width, args.halo, pedestal)
    report = {
        "data": str(data),
        "slab_half_width": args.slab,
        "width": args.width,
        "halo": list(args.halo),
        "weight": weight,
        **({"repel": args.repel, "stiffness": args.stiffness} if args.repel > 0 else {}),
        "start": None if args.start is None else str(args.start),
        "gaussians": len(first),
        "scored": int(inner.sum()),
        "coordinates_over_2": 1.5 * len(start),
        "rows": rows,
    }
    out = ROOT / "docs" / "benchmarks" / f"information_limit_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    write_positions(ROOT / "results" / "information_limit" / f"{name}.xyz", fit.positions.detach().numpy())


if __name__ == "__main__":
    main()
