"""Where a fit misses atoms, which search finds them: the three birth searches of ``DensityStrategy.birth_map``.

    python benchmarks/birth_search.py DATA [--missing 20] [--steps 300] [--born 1000 2500 4000]
        [--name si9nm_d8000]

DATA: a count dataset with ground_truth.xyz. Training starts at the true atoms with ``--missing``
% of them left out (``start_basin.disturbed``) and runs ``--steps`` steps (weight selection, no
duplication, positions' rate 0.01, no final refinement). Then, on its residual (every training
projection, measured less modelled), each search ranks its maxima at least the minimum distance
from every Gaussian:

- "back-projected residual": weight selection's (the residual back-projected unfiltered, data units);
- "score test": evidence selection's (the score test of one more atom, its per-view score
  back-projected; standard scores);
- "residual reconstruction": evidence selection's with ``birth_search="reconstruction"`` (a 5-pass
  SIRT of the residual, smoothed by the atoms' width; standard scores of its robust noise).

Reported per search: its strongest value, how many maxima pass its threshold (and how many of those
lie at a missing atom), and, of its K strongest points, the share within 0.75 A of a true atom that
no Gaussian matches and how many such atoms they reach. Then, for each ``--born`` K, the fitted
atoms plus Gaussians at the K strongest maxima of the residual reconstruction (median weight and
width) train ``--steps`` more steps, splitting off, and TPR / FPR are reported.

Writes docs/benchmarks/birth_search_<name>.json and docs/figures/birth_search_<name>.png (share at
missing atoms against K, every search).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
import torch
from scipy.spatial import cKDTree
from start_basin import disturbed

from atomsplat.analysis.matching import PAPER_MAX_DISTANCE, evaluate
from atomsplat.export import atoms_from_model, load_model
from atomsplat.model import density
from atomsplat.training import train

ROOT = Path(__file__).resolve().parents[1]

SEARCHES = {"back-projected residual": "residual", "score test": "score", "residual reconstruction": "reconstruction"}
"""The searches compared: label, and :meth:`DensityStrategy.birth_map`'s method."""

RANKS = (25, 50, 100, 250, 500, 1000, 2000, 3000, 5000)
"""How many of each search's strongest points are scored."""

FIT = dict(holdout_every=10, selection="weight", densify_until=0.0, final_refinement=False)
FIT_RATES = {"positions": 0.01}


def fit(data: Path, start: ase.Atoms, steps: int, work: Path, **options):
    """The model trained ``steps`` steps from the atoms ``start`` (with their "weight" and "sigma"
    columns where given) under :data:`FIT`."""
    work.mkdir(parents=True, exist_ok=True)
    ase.io.write(work / "start.xyz", start, format="extxyz")
    with contextlib.redirect_stdout(io.StringIO()):
        config = train(
            data, steps, work, init_support="atoms", init_atoms=work / "start.xyz", learning_rates=FIT_RATES,
            **FIT, **options,
        )  # fmt: skip
        return load_model(config)[0]


def birth_search_points(model, residual, method: str) -> tuple:
    """(points (M, 3) A, scores (M,), the search's threshold) of the birth search ``method`` of
    :meth:`atomsplat.model.strategy.DensityStrategy.birth_map` ("residual", "score" or
    "reconstruction") on ``residual`` (images, views, variance of all training projections) for the
    model's Gaussians: every maximum of its score at least the minimum distance from every Gaussian."""
    strategy, options = model.strategy, model.strategy.options  # birth_map's method, not the selection, decides
    found = strategy.birth_map(model.cloud, lambda count: residual, method, options.birth_significance)
    gaussians = model.cloud.positions.detach().cpu().numpy()
    index = density.residual_peaks(found.score, -np.inf, options.merge_distance, found.spacing, gaussians, found.origin)
    points = density.grid_positions(index, found.score.shape, found.origin, found.spacing)
    return points, found.score.reshape(-1)[index], float(found.threshold)


def precision(points: np.ndarray, values: np.ndarray, threshold, missing: np.ndarray) -> dict:
    """The strongest value, the search's threshold and how many points pass it (and how many of
    those lie within 0.75 A of a ``missing`` atom), and per K of :data:`RANKS` the share of the K
    strongest ``points`` at a missing atom and how many missing atoms they reach."""
    order = np.argsort(-values, kind="stable")
    distance, nearest = cKDTree(missing).query(points[order])
    hit = distance < PAPER_MAX_DISTANCE
    passing = values[order] > threshold
    return {
        "strongest": float(values.max()),
        "threshold": threshold,
        "above_threshold": int(passing.sum()),
        "above_threshold_at_missing_atoms": int((passing & hit).sum()),
        "ranks": [
            {
                "k": k,
                "at_missing_atoms": round(float(hit[:k].mean()), 4),
                "missing_reached": len(set(nearest[:k][hit[:k]])),
            }
            for k in RANKS
            if k <= len(order)
        ],
    }


def plot(report: dict, path: Path, title: str) -> None:
    from atomsplat.report import pyplot, save_figure

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for k, (label, rows) in enumerate(report["searches"].items()):
        ranks = rows["ranks"]
        ax.plot([r["k"] for r in ranks], [r["at_missing_atoms"] for r in ranks], marker="o", color=f"C{k}", label=label)
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("strongest points taken")
    ax.set_ylabel("share at a missing atom")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--missing", type=float, default=20.0, help="percent of the true atoms left out")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--born", type=int, nargs="*", default=[1000, 2500, 4000])
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    name = args.name or args.data.name
    truth = ase.io.read(args.data / "ground_truth.xyz")
    report = {"data": str(args.data), "missing_percent": args.missing, "steps": args.steps}
    with tempfile.TemporaryDirectory() as work:
        began = time.perf_counter()
        model = fit(args.data, disturbed(truth, 0.0, args.missing / 100.0, 0.0), args.steps, Path(work) / "first")
        report["fit_seconds"] = round(time.perf_counter() - began, 1)
        atoms = atoms_from_model(model)
        first = evaluate(atoms.positions, truth.positions)
        report["fitted"] = {"gaussians": len(atoms), "tpr": round(first.tpr, 4), "fpr": round(first.fpr, 4)}
        gaussians = model.cloud.positions.detach().cpu().numpy()
        missing = truth.positions[cKDTree(gaussians).query(truth.positions)[0] >= PAPER_MAX_DISTANCE]
        report["missing_atoms"] = len(missing)
        with torch.no_grad():
            residual = model.residuals(len(model.train_indices))
        searches, found = {}, {}
        for label, method in SEARCHES.items():
            began = time.perf_counter()
            found[method] = birth_search_points(model, residual, method)
            searches[label] = precision(*found[method], missing)
            report[f"{method}_seconds"] = round(time.perf_counter() - began, 1)
        report["searches"] = searches
        print(
            f"fitted from the truth less {args.missing:g} %: {len(atoms)} Gaussians, TPR {first.tpr:.3f} FPR "
            f"{first.fpr:.3f}; {len(missing)} true atoms without a Gaussian within {PAPER_MAX_DISTANCE} A",
            flush=True,
        )
        for label, rows in searches.items():
            passing = (
                f"; {rows['above_threshold']} above its threshold {rows['threshold']:.3g} "
                f"({rows['above_threshold_at_missing_atoms']} at missing atoms)"
            )
            ranks = ", ".join(f"top {r['k']} {r['at_missing_atoms']:.2f}" for r in rows["ranks"])
            print(f"  {label}: strongest {rows['strongest']:.3g}{passing}; at missing atoms: {ranks}", flush=True)
        sirt_points, sirt_values, _ = found["reconstruction"]
        order = np.argsort(-sirt_values, kind="stable")
        weight, width = float(np.median(atoms.arrays["weight"])), float(np.median(atoms.arrays["sigma"]))
        report["born"] = []
        for k in args.born:
            born = sirt_points[order[:k]]
            start = ase.Atoms(
                list(atoms.get_chemical_symbols()) + [truth.get_chemical_symbols()[0]] * len(born),
                np.vstack([atoms.positions, born]),
            )
            start.arrays["weight"] = np.concatenate([atoms.arrays["weight"], np.full(len(born), weight)])
            start.arrays["sigma"] = np.concatenate([atoms.arrays["sigma"], np.full(len(born), width)])
            at_start = evaluate(start.positions, truth.positions)
            began = time.perf_counter()
            after = atoms_from_model(fit(args.data, start, args.steps, Path(work) / f"born{k}", split_until=0.0))
            scores = evaluate(after.positions, truth.positions)
            row = {
                "born": int(len(born)),
                "start": {"tpr": round(at_start.tpr, 4), "fpr": round(at_start.fpr, 4)},
                "after": {"gaussians": len(after), "tpr": round(scores.tpr, 4), "fpr": round(scores.fpr, 4)},
                "seconds": round(time.perf_counter() - began, 1),
            }
            report["born"].append(row)
            print(
                f"  {k} born at the residual reconstruction's maxima: start {at_start.tpr:.3f} / {at_start.fpr:.3f}, "
                f"after "
                f"{args.steps} steps without splits {scores.tpr:.3f} / {scores.fpr:.3f} ({len(after)} atoms)",
                flush=True,
            )
    out = ROOT / "docs" / "benchmarks" / f"birth_search_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    title = f"{name}: fitted from the truth less {args.missing:g} %, {len(missing)} atoms missing"
    plot(report, ROOT / "docs" / "figures" / f"birth_search_{name}.png", title)


if __name__ == "__main__":
    main()
