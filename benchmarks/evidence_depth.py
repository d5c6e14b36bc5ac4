"""Can the true atoms pay the evidence selection's price? Removal gains of the true atoms by depth.

    python benchmarks/evidence_depth.py DATA [--steps 300] [--name si9nm_d8000]

DATA: a count dataset with ground_truth.xyz. The model starts at the true atoms and trains
``--steps`` steps with nothing removed, split or born (weight selection at fraction 0), so the
Gaussians are the true atoms, fitted; then each one's removal gain (how much the negative
log-likelihood of the training projections grows without it, the others held) is set against the
price the default "evidence" selection asks of it (BIC: half its parameters times the log of the
pixels it touches). A true atom below its price is one the default selection removes. Reported by
distance from the particle's centre (A), since an atom deep in a thick particle sits on the counts
of every atom in its columns: its signal is the same, its noise larger.

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

import ase.io
import numpy as np
from scipy.spatial import cKDTree

from atomsplat.export import load_model
from atomsplat.model.strategy import DensityStrategy
from atomsplat.training import train

ROOT = Path(__file__).resolve().parents[1]


def gains_at_truth(data: Path, steps: int) -> dict:
    """Removal gains (nats), prices (nats) and distances from the centre (A) of the true atoms of
    ``data`` after ``steps`` steps of fitting from them (every 10th projection held out)."""
    options = dict(
        holdout_every=10,
        init_support="atoms",
        init_atoms=data / "ground_truth.xyz",
        final_refinement=False,
        selection="weight",
        prune_fraction=0.0,
        birth_every=0,
        split_until=0.0,
        densify_until=0.0,
    )
    with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(io.StringIO()):
        model, _ = load_model(train(data, steps, Path(work), **options))
        params = model.cloud.detached()
        gains, touched = model.removal_evidence(params)
        price = DensityStrategy.price(params, touched)
        positions = params["positions"].cpu().numpy()
    radius = np.linalg.norm(positions - positions.mean(axis=0), axis=1)
    truth = ase.io.read(data / "ground_truth.xyz")
    _, nearest = cKDTree(truth.positions).query(positions)
    species = np.asarray(truth.get_chemical_symbols())[nearest]
    return {"gain": gains.cpu().numpy(), "price": price.cpu().numpy(), "radius": radius, "species": species}


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(values["radius"], values["gain"], s=2, alpha=0.3, label="true atom's removal gain")
    order = np.argsort(values["radius"])
    ax.plot(values["radius"][order], values["price"][order], color="C3", lw=1, label="BIC price")
    ax.set_xlabel("distance from the particle's centre (A)")
    ax.set_ylabel("nats")
    ax.set_ylim(min(0.0, float(np.percentile(values["gain"], 0.5))), float(np.percentile(values["gain"], 99.5)))
    ax.set_title(title)
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    name = args.name or args.data.name
    values = gains_at_truth(args.data, args.steps)
    rows = summary(values)
    report = {
        "data": str(args.data),
        "steps": args.steps,
        "atoms": int(len(values["gain"])),
        "below_price": round(float((values["gain"] < values["price"]).mean()), 4),
        "shells": rows,
        "species": by_species(values),
    }
    out = ROOT / "docs" / "benchmarks" / f"evidence_depth_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot(
        values, ROOT / "docs" / "figures" / f"evidence_depth_{name}.png", f"{name}: true atoms after {args.steps} steps"
    )
    print(f"{report['atoms']} true atoms, {100 * report['below_price']:.1f} % below the BIC price")
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


if __name__ == "__main__":
    main()
