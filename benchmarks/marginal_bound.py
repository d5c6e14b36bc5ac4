"""How far below the Cramer-Rao bound is each atom's own Fisher block? The marginal deviations of a band of true atoms.

    python benchmarks/marginal_bound.py DATA [--name NAME] [--centre 0.0] [--inner 1.0] [--margins 2.0 4.0]
        [--width 0.5706 --halo 0.4105 1.824]

DATA: a count series with ground_truth.xyz (a single tilt axis along x). Each atom's own block of
the Fisher information (its neighbours held known) is a lower bound of the marginal deviation that
the inverse of the whole matrix gives; above ``full_uncertainty_limit`` atoms the method scales the
own blocks by their median ratio over one band about the atoms' middle (``UNCERTAINTY_KINDS``
"scaled own block", :data:`atomsplat.model.refinement.BAND`). How far below, and does one band's
ratio hold across the particle (``--centre``), for a particle too large for the whole matrix? The
tied model of ``information_limit.py`` (every atom of one weight, the mean signal over the atoms'
count, the width and halo held) is placed at the true atoms; the pixels' variances are its
expectation over all atoms (Poisson, the border pedestal added), on the full detector of every
training projection (every 10th held out). For each margin M the whole Fisher matrix of the atoms
within ``|x - centre| < inner + M`` (5 parameters each, and each view's pedestal) is built and
inverted (:func:`atomsplat.render.fisher.fisher_matrix`,
:func:`~atomsplat.render.fisher.marginal_position_variances`), the atoms beyond held known, and the
marginal deviations of the atoms within ``|x - centre| < inner`` are compared with their own blocks'
(:func:`~atomsplat.render.fisher.fisher_blocks`). A single tilt axis makes the slices along it
independent up to the footprints' reach, so the marginals converge as M grows: two margins that
agree show the band holds every correlation that matters.

Writes docs/benchmarks/marginal_bound_<name>.json: per margin the atoms in the band, the RMS
deviations per axis (pm) of both kinds, the median and 90th percentile of their ratio, seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from information_limit import HALO, WIDTH, tied_at
from tied_search import border_pedestal, mean_signal

from atomsplat.data.dataparser import split_indices
from atomsplat.data.formats import read_tilt_series
from atomsplat.model.cloud import series_views
from atomsplat.render.fisher import fisher_blocks, fisher_matrix, marginal_position_variances, position_covariances

ROOT = Path(__file__).resolve().parents[1]


def band_bounds(positions: np.ndarray, weight: float, width: float, halo, views, inverse_variance) -> tuple:
    """(own-block deviations, marginal deviations), each (K, 3) A, of atoms at ``positions`` (K, 3) A
    of one ``weight`` and ``width`` (and ``halo``), for ``views`` whose pixels have ``inverse_variance``
    (V, H, W); the marginals from the whole matrix with one pedestal per view."""
    count = len(positions)
    args = (
        torch.from_numpy(positions).double(),
        torch.full((count,), width, dtype=torch.float64),
        torch.full((count,), weight, dtype=torch.float64),
        views.rotations.double(), views.offsets.double(), views.pixel_size, inverse_variance,
    )  # fmt: skip
    own = position_covariances(fisher_blocks(*args, halo=halo)).diagonal(dim1=1, dim2=2).sqrt().numpy()
    pedestal = torch.ones(1, *inverse_variance.shape[1:], dtype=torch.float64)
    matrix = fisher_matrix(*args, linear=pedestal, halo=halo)
    return own, np.sqrt(marginal_position_variances(matrix, count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--name", default=None)
    parser.add_argument("--centre", type=float, default=0.0, help="A: the band's middle along x")
    parser.add_argument("--inner", type=float, default=1.0, help="A: the atoms compared, |x - CENTRE| < INNER")
    parser.add_argument("--margins", type=float, nargs="+", default=[2.0, 4.0], help="A: the band beyond them")
    parser.add_argument("--width", type=float, default=WIDTH, help="A: the Gaussians' core width")
    parser.add_argument("--halo", type=float, nargs=2, default=HALO, help="the halo's fraction and width ratio")
    args = parser.parse_args()
    series = read_tilt_series(args.data)
    truth = ase.io.read(args.data / "ground_truth.xyz").positions
    train = split_indices(len(series.projections), "train", 10)
    pedestal = border_pedestal(series, train)
    weight = mean_signal(series, train, pedestal) / len(truth)
    fit = tied_at(series, train, truth, weight, args.width, args.halo, pedestal)
    with torch.no_grad():  # every atom's expectation: the pixels' variances
        chunks = [fit.project(series_views(series, train[k : k + 6]), 0.0) for k in range(0, len(train), 6)]
    inverse_variance = 1.0 / (torch.cat(chunks).double() + pedestal)
    views = series_views(series, train)
    rows = []
    for margin in args.margins:
        began = time.perf_counter()
        band = truth[np.abs(truth[:, 0] - args.centre) < args.inner + margin]
        inner = np.abs(band[:, 0] - args.centre) < args.inner
        own, marginal = band_bounds(band, weight, args.width, tuple(args.halo), views, inverse_variance)
        ratio = marginal[inner] / own[inner]
        row = {
            "margin": margin,
            "atoms": len(band),
            "compared": int(inner.sum()),
            "own_block_rms_pm": [round(float(v), 2) for v in 100 * np.sqrt(np.mean(own[inner] ** 2, axis=0))],
            "marginal_rms_pm": [round(float(v), 2) for v in 100 * np.sqrt(np.mean(marginal[inner] ** 2, axis=0))],
            "ratio_median": [round(float(v), 3) for v in np.median(ratio, axis=0)],
            "ratio_p90": [round(float(v), 3) for v in np.percentile(ratio, 90, axis=0)],
            "seconds": round(time.perf_counter() - began, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "data": str(args.data),
        "centre": args.centre,
        "inner": args.inner,
        "width": args.width,
        "halo": list(args.halo),
        "rows": rows,
    }
    out = ROOT / "docs" / "benchmarks" / f"marginal_bound_{args.name or args.data.name}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
