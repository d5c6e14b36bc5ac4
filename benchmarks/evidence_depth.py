"""Can the true atoms pay the evidence selection's price? Removal gains of the true atoms by depth.

    python benchmarks/evidence_depth.py DATA [--steps 300] [--name si9nm_d8000]
        [--planted 1000] [--position-lr 0.01]

DATA: a count dataset with ground_truth.xyz. The model starts at the true atoms and trains
``--steps`` steps with nothing merged, removed, split or born (weight selection at fraction 0, no
merging), so the Gaussians are the true atoms, fitted; then each one's removal gain (how much the
negative log-likelihood of the training projections grows without it, the others held) is set
against the price the default "evidence" selection asks of it (BIC: half its parameters times the
log of the pixels it touches). A true atom below its price is one the default selection removes.
Reported by distance from the particle's centre (A), since an atom deep in a thick particle sits on
the counts of every atom in its columns: its signal is the same, its noise larger.

``--planted N``: N false Gaussians start among the true atoms, inside the particle, and N / 4 in
the vacuum around it, each at least :data:`PLANT_GAP` from every atom, and are fitted with them:
what a Gaussian that is no atom gains (the price must stop those) against what a true atom gains,
reported as the share of false Gaussians above the price, above the price of their 3 position
parameters alone (what a Gaussian whose weight and width are tied to its species' would pay), and
above the price that would keep 95 % of the true atoms. ``--position-lr``: the positions' starting
learning rate (A per Adam step; the method's otherwise), since the atoms' jitter under Adam feeds the
false Gaussians.

Writes docs/benchmarks/evidence_depth_<name>.json and docs/figures/evidence_depth_<name>.png (gain
against distance from the centre, with the price).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Optional

import ase
import ase.io
import numpy as np
from scipy.spatial import cKDTree

from atomsplat.export import load_model
from atomsplat.model.strategy import DensityStrategy
from atomsplat.training import train

ROOT = Path(__file__).resolve().parents[1]

PLANT_GAP = 1.3
"""A: the least distance of a planted false Gaussian from every true atom at its start."""

TRUE, INSIDE, OUTSIDE = 0, 1, 2
"""Kinds of fitted Gaussian: a true atom, a false one planted inside the particle, one in the vacuum."""


def plant(truth: np.ndarray, count: int, seed: int = 0) -> tuple:
    """(inside (count, 3), outside (count // 4, 3)) A: random points at least :data:`PLANT_GAP` from
    every atom of ``truth`` (K, 3) A, inside the particle's sphere (1 A short of its outermost atom)
    and in a shell of 0.5-3 A beyond it."""
    rng = np.random.default_rng(seed)
    tree = cKDTree(truth)
    centre = truth.mean(axis=0)
    outer = float(np.linalg.norm(truth - centre, axis=1).max())
    inside, outside = [], []
    while len(inside) < count or len(outside) < count // 4:
        points = centre + rng.uniform(-outer - 3.0, outer + 3.0, size=(4096, 3))
        gap = tree.query(points)[0]
        radius = np.linalg.norm(points - centre, axis=1)
        for point, far, r in zip(points, gap >= PLANT_GAP, radius):
            if far and r < outer - 1.0 and len(inside) < count:
                inside.append(point)
            elif far and outer + 0.5 < r < outer + 3.0 and len(outside) < count // 4:
                outside.append(point)
    return np.array(inside).reshape(-1, 3), np.array(outside).reshape(-1, 3)


def gains_at_truth(data: Path, steps: int, planted: int = 0, position_lr: Optional[float] = None) -> dict:
    """Removal gains (nats), BIC prices of all parameters and of the positions alone (nats), distances
    from the centre (A), species, kinds (:data:`TRUE`, :data:`INSIDE`, :data:`OUTSIDE`) and distances
    from the nearest true atom (A) of the Gaussians fitted for ``steps`` steps from the true atoms of
    ``data`` and ``planted`` false ones (:func:`plant`; every 10th projection held out)."""
    truth = ase.io.read(data / "ground_truth.xyz")
    inside, outside = plant(truth.positions, planted)
    kinds = np.repeat([TRUE, INSIDE, OUTSIDE], [len(truth), len(inside), len(outside)])
    start = truth.copy()
    start += ase.Atoms([truth.get_chemical_symbols()[0]] * (len(inside) + len(outside)), np.vstack([inside, outside]))
    options = dict(
        holdout_every=10,
        init_support="atoms",
        final_refinement=False,
        selection="weight",
        prune_fraction=0.0,
        merge=False,
        birth_every=0,
        split_until=0.0,
        densify_until=0.0,
        learning_rates=None if position_lr is None else {"positions": position_lr},
    )
    with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(io.StringIO()):
        ase.io.write(Path(work) / "start.xyz", start)
        model, _ = load_model(train(data, steps, Path(work), init_atoms=Path(work) / "start.xyz", **options))
        params = model.cloud.detached()
        gains, touched = model.removal_evidence(params)
        price = DensityStrategy.price(params, touched)
        position_price = DensityStrategy.price({"positions": params["positions"]}, touched)
        positions = params["positions"].cpu().numpy()
    if len(positions) != len(kinds):
        raise RuntimeError(f"{len(kinds)} Gaussians started, {len(positions)} fitted: some were removed")
    radius = np.linalg.norm(positions - truth.positions.mean(axis=0), axis=1)
    offset, nearest = cKDTree(truth.positions).query(positions)
    species = np.asarray(truth.get_chemical_symbols())[nearest]
    return {
        "gain": gains.cpu().numpy(),
        "price": price.cpu().numpy(),
        "position_price": position_price.cpu().numpy(),
        "radius": radius,
        "species": species,
        "kind": kinds,
        "offset": offset,
    }


def true_atoms(values: dict) -> dict:
    """``values`` of the true atoms only."""
    mine = values["kind"] == TRUE
    return {name: column[mine] for name, column in values.items()}


def planted_summary(values: dict) -> dict:
    """Per kind of false Gaussian: how many, their gains' percentiles, the share above the price
    (kept by the evidence selection), above the positions' price and above the price that keeps
    95 % of the true atoms; and the share of true atoms below the positions' price."""
    truth = values["kind"] == TRUE
    fair = float(np.percentile(values["gain"][truth], 5))
    rows = {
        "price_keeping_95_percent_of_true_atoms_nats": round(fair, 2),
        "true_below_position_price": round(float((values["gain"][truth] < values["position_price"][truth]).mean()), 4),
    }
    for kind, label in ((INSIDE, "inside"), (OUTSIDE, "outside")):
        mine = values["kind"] == kind
        if mine.sum() == 0:
            continue
        gains = values["gain"][mine]
        rows[label] = {
            "gaussians": int(mine.sum()),
            "gain_percentiles_50_90_99_nats": [round(float(g), 2) for g in np.percentile(gains, [50, 90, 99])],
            "above_price": round(float((gains > values["price"][mine]).mean()), 4),
            "above_position_price": round(float((gains > values["position_price"][mine]).mean()), 4),
            "above_95_percent_price": round(float((gains > fair).mean()), 4),
            "median_distance_from_atom_A": round(float(np.median(values["offset"][mine])), 3),
        }
    return rows


def summary(values: dict, shell: float = 5.0) -> list:
    """Per shell of ``shell`` A from the centre: atoms, median gain and price, fraction below price."""
    rows = []
    for low in np.arange(0.0, float(values["radius"].max()) + shell, shell):
        inside = (values["radius"] >= low) & (values["radius"] < low + shell)
        if inside.sum() == 0:
            continue
        rows.append(
            {
                "from_A": float(low),
                "to_A": float(low + shell),
                "atoms": int(inside.sum()),
                "median_gain_nats": round(float(np.median(values["gain"][inside])), 2),
                "median_price_nats": round(float(np.median(values["price"][inside])), 2),
                "below_price": round(float((values["gain"][inside] < values["price"][inside]).mean()), 4),
            }
        )
    return rows


def by_species(values: dict) -> dict:
    """Per element: atoms, median and 10th-percentile gain, median price, fraction below price."""
    rows = {}
    for element in sorted(set(values["species"])):
        mine = values["species"] == element
        rows[str(element)] = {
            "atoms": int(mine.sum()),
            "median_gain_nats": round(float(np.median(values["gain"][mine])), 2),
            "p10_gain_nats": round(float(np.percentile(values["gain"][mine], 10)), 2),
            "median_price_nats": round(float(np.median(values["price"][mine])), 2),
            "below_price": round(float((values["gain"][mine] < values["price"][mine]).mean()), 4),
        }
    return rows


def plot(values: dict, path: Path, title: str) -> None:
    from atomsplat.report import pyplot, save_figure

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    kinds = ((TRUE, "true atoms", "C0"), (INSIDE, "false, inside", "C1"), (OUTSIDE, "false, outside", "C2"))
    for kind, label, colour in kinds:
        mine = values["kind"] == kind
        if mine.any():
            gains = values["gain"][mine]
            ax.scatter(values["radius"][mine], gains, s=2, alpha=0.3, color=colour, label=f"{label}: removal gain")
    order = np.argsort(values["radius"])
    ax.plot(values["radius"][order], values["price"][order], color="C3", lw=1, label="BIC price")
    if (values["kind"] != TRUE).any():
        ax.plot(values["radius"][order], values["position_price"][order], color="C4", lw=1, label="3-parameter price")
    ax.set_xlabel("distance from the particle's centre (A)")
    ax.set_ylabel("nats")
    ax.set_ylim(min(0.0, float(np.percentile(values["gain"], 0.5))), float(np.percentile(values["gain"], 99.5)))
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--name", default=None)
    parser.add_argument("--planted", type=int, default=0, help="false Gaussians planted inside (and 1/4 of it outside)")
    parser.add_argument("--position-lr", type=float, default=None, help="positions' starting learning rate, A per step")
    args = parser.parse_args()
    name = args.name or args.data.name
    values = gains_at_truth(args.data, args.steps, args.planted, args.position_lr)
    atoms = true_atoms(values)
    rows = summary(atoms)
    report = {
        "data": str(args.data),
        "steps": args.steps,
        "position_lr": args.position_lr,
        "atoms": int(len(atoms["gain"])),
        "below_price": round(float((atoms["gain"] < atoms["price"]).mean()), 4),
        "median_offset_A": round(float(np.median(atoms["offset"])), 3),
        "shells": rows,
        "species": by_species(atoms),
    }
    if args.planted:
        report["planted"] = planted_summary(values)
    out = ROOT / "docs" / "benchmarks" / f"evidence_depth_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    fitted = "true atoms and planted false Gaussians" if args.planted else "true atoms"
    plot(values, ROOT / "docs" / "figures" / f"evidence_depth_{name}.png", f"{name}\n{fitted} after {args.steps} steps")
    print(
        f"{report['atoms']} true atoms, {100 * report['below_price']:.1f} % below the BIC price, a median "
        f"{report['median_offset_A']:.3f} A from their true positions"
    )
    for row in rows:
        print(
            f"  {row['from_A']:4.0f}-{row['to_A']:3.0f} A: {row['atoms']:5d} atoms, median gain "
            f"{row['median_gain_nats']:6.1f} nats, price {row['median_price_nats']:5.1f}, "
            f"{100 * row['below_price']:5.1f} % below"
        )
    for element, row in report["species"].items():
        print(
            f"  {element:>2}: {row['atoms']:5d} atoms, median gain {row['median_gain_nats']:6.1f} nats "
            f"(10th percentile {row['p10_gain_nats']:6.1f}), price {row['median_price_nats']:5.1f}, "
            f"{100 * row['below_price']:5.1f} % below"
        )
    planted = report.get("planted", {})
    if planted:
        print(f"  true atoms below the 3-parameter price: {100 * planted['true_below_position_price']:.1f} %")
    for label in ("inside", "outside"):
        if label in planted:
            row = planted[label]
            print(
                f"  {row['gaussians']} false Gaussians {label}: gains {row['gain_percentiles_50_90_99_nats']} nats "
                f"(50/90/99th percentiles), {100 * row['above_price']:.1f} % above the price, "
                f"{100 * row['above_position_price']:.1f} % above the 3-parameter price, "
                f"{100 * row['above_95_percent_price']:.1f} % above "
                f"{planted['price_keeping_95_percent_of_true_atoms_nats']:.1f} (the price keeping 95 % of the atoms)"
            )


if __name__ == "__main__":
    main()
