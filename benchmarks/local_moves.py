"""Can local moves mend a fit's atoms? Removal below a price, and births, in rounds on a trained run.

    python benchmarks/local_moves.py CONFIG [--rounds 4] [--births 0] [--radius 2.5] [--iterations 20]

CONFIG: the config.yml of a run on a dataset with ground_truth.xyz (``ns-train atomsplat ...
--pipeline.model.final-refinement False``, or :mod:`atomsplat.training`). The run's atoms are
merged and pruned as its last pass would, the diffuse Gaussians removed (weight selection), and
refined (L-BFGS, :func:`atomsplat.model.refinement.refine`, ``--iterations``). Then every round:

- with ``--births K``: the K strongest maxima of the reconstruction of the residual
  (:meth:`atomsplat.model.strategy.DensityStrategy.birth_map`, "reconstruction", at training's
  significance) become Gaussians with the score test's weight, and all are refined;
- removal: each Gaussian's removal gain on all training projections
  (:meth:`atomsplat.model.atomsplat_model.AtomSplatModel.removal_evidence`) against the price of its
  position alone (the 3-parameter price, :meth:`DensityStrategy.price`); of those below it the
  lowest first, none within ``--radius`` A of one already taken this round (a pair on one atom
  loses one of its two, not both), are removed, and all are refined.

Prints TPR / FPR after each step, and how many of the Gaussians below the price and removed were
within 0.75 A of a true atom. A search for the removal rule that takes false Gaussians and not deep
atoms, on fits that training left with both.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from scipy.spatial import cKDTree

from atomsplat.analysis.matching import PAPER_MAX_DISTANCE, evaluate, match_atoms
from atomsplat.data.formats import ground_truth_path
from atomsplat.export import load_model
from atomsplat.model import density
from atomsplat.model.refinement import refine
from atomsplat.model.strategy import DensityStrategy


def scores(model, truth: np.ndarray) -> str:
    """The model's Gaussians and its atoms' TPR / FPR / RMSE against ``truth`` (K, 3) A, as a line."""
    params = model.cloud.detached()
    atoms = model.atom_mask(params)
    report = evaluate(params["positions"][atoms].cpu().numpy(), truth)
    return f"{model.cloud.count} Gaussians, TPR {report.tpr:.3f} FPR {report.fpr:.3f} RMSE {report.rmse:.3f} A"


def keep(model, indices: np.ndarray) -> None:
    """Keep the Gaussians ``indices`` of the model's cloud."""
    chosen = torch.from_numpy(indices)
    params = model.cloud.detached()
    model.strategy.install(model.cloud, {}, {name: values[chosen] for name, values in params.items()}, chosen)


@torch.no_grad()
def births(model, count: int) -> np.ndarray:
    """Add the ``count`` strongest maxima of the residual's reconstruction as Gaussians; their positions."""
    strategy = model.strategy
    found = strategy.birth_map(model.cloud, model.residuals, "reconstruction", strategy.options.birth_significance)
    params = model.cloud.detached()
    peaks = density.residual_peaks(
        found.score, found.threshold, strategy.options.merge_distance, found.spacing,
        params["positions"].cpu().numpy(), found.origin,
    )  # fmt: skip
    peaks = peaks[np.argsort(-found.score.reshape(-1)[peaks], kind="stable")][:count]
    positions = density.grid_positions(peaks, found.score.shape, found.origin, found.spacing)
    log_weights = torch.from_numpy(np.log(found.weights(peaks, params)))
    params, source = density.append(params, torch.from_numpy(positions), log_weights)
    strategy.install(model.cloud, {}, params, source)
    return positions


@torch.no_grad()
def removals(model, radius: float):
    """(Gaussians below the position's price, those removed this round): indices, lowest gain first."""
    params = model.cloud.detached()
    gains, touched = model.removal_evidence(params)
    price = DensityStrategy.price({"positions": params["positions"]}, touched)
    below = torch.nonzero(gains < price).squeeze(1).cpu().numpy()
    below = below[np.argsort(gains.cpu().numpy()[below], kind="stable")]
    positions = params["positions"].cpu().numpy()
    tree, blocked, chosen = cKDTree(positions), np.zeros(len(positions), dtype=bool), []
    for index in below:
        if not blocked[index]:
            chosen.append(index)
            blocked[tree.query_ball_point(positions[index], radius)] = True
    return below, np.asarray(chosen, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--births", type=int, default=0, help="births per round at the residual's maxima")
    parser.add_argument("--radius", type=float, default=2.5, help="A between two removals of one round")
    parser.add_argument("--iterations", type=int, default=20, help="L-BFGS iterations of each refinement")
    args = parser.parse_args()
    model, step = load_model(args.config)
    model.step = step
    truth_file = ground_truth_path(model.series.source)
    if truth_file is None:
        raise SystemExit(f"{args.config}: its dataset ({model.series.source}) has no ground_truth.xyz")
    truth = ase.io.read(truth_file).positions
    refining = model.refinement_args()

    def refined(what: str) -> None:
        began = time.perf_counter()
        refine(*refining, iterations=args.iterations, rounds=1)
        print(f"{what}, refined ({time.perf_counter() - began:.0f} s): {scores(model, truth)}", flush=True)

    print(f"trained: {scores(model, truth)}")
    model.strategy.refine(model.cloud, {}, step, final=True)
    model.strategy.remove_diffuse(model.cloud, {})
    refined("last pass")
    for k in range(args.rounds):
        if args.births:
            positions = births(model, args.births)
            near = float((cKDTree(truth).query(positions)[0] < PAPER_MAX_DISTANCE).mean()) if len(positions) else 0.0
            refined(f"round {k}: {len(positions)} born ({near:.2f} within {PAPER_MAX_DISTANCE} A of an atom)")
        below, chosen = removals(model, args.radius)
        matched = np.zeros(model.cloud.count, dtype=bool)
        matched[match_atoms(model.cloud.positions.detach().cpu().numpy(), truth, PAPER_MAX_DISTANCE)[0]] = True
        keep(model, np.setdiff1d(np.arange(model.cloud.count), chosen))
        refined(
            f"round {k}: {len(below)} below the position's price ({int(matched[below].sum())} at atoms), "
            f"{len(chosen)} removed ({int(matched[chosen].sum())} at atoms)"
        )
        if len(chosen) == 0:
            break


if __name__ == "__main__":
    main()
