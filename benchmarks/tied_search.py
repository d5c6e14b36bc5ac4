"""Which basin does a fit of the right count reach? Positions alone, the atoms' weight tied, from a start.

    python benchmarks/tied_search.py DATA [--name si9nm_d8000] [--steps 1600] [--blur 1.0]
        [--blur-steps 1200] [--cases sirt sirt-blur jitter0.5] [--repel 0 --stiffness 200] [--count 1]

DATA: a count series with ground_truth.xyz. Every case fits as many Gaussians as its start has (no
birth, split, merge or removal) to the training projections (every 10th held out) by their Poisson
likelihood, each view's pedestal solved at every step: the positions free (Adam, 6 views per step,
0.02 A per step falling to a tenth over the last 400 steps), every Gaussian with one weight (the
mean signal of a training projection over the start's count: with as many Gaussians as atoms, each
carries one atom's counts, so a double makes a surplus and a hole a deficit that the positions
must resolve), one width and one halo (:class:`atomsplat.model.cloud.AtomShape`) shared and
fitted. It asks whether the likelihood, with the topology's freedom taken away, leads a start to
the atoms:

- ``sirt``: the classical start at the atoms' count (``start_basin.sirt_start``), or at ``--count``
  times it (how well must the count be known?);
- ``jitter<S>``: the true atoms moved by normal steps of S A per axis (the truth's basin;
  ``jitter0``: the true atoms);
- a ``-blur`` suffix: a continuation, data and model blurred alike by a Gaussian of ``--blur`` A
  (on the detector) that falls linearly to 0 over ``--blur-steps``: a blurred Gaussian atom is a
  wider one (width ``sqrt(sigma^2 + b^2)``, exact), and the wider basins let a Gaussian reach an
  atom farther away.

``--repel R`` adds a soft minimum distance to every case: ``--stiffness`` x (R - d)^2 nats per view
for each pair of Gaussians closer than R A (the bonds of amorphous Si start at 2.2 A).

Records TPR / FPR every 100 steps, and at the end the matched atoms' distances, where the false
Gaussians and the missed atoms lie (:func:`misses`), and the negative
log-likelihood of all training projections (nats, each view's pedestal solved): a lower value at
the same count is the better fit, so two cases' ends say whether the likelihood or the search
separates them. Writes docs/benchmarks/tied_search_<name>.json and docs/figures/tied_search_<name>.png,
and each case's end as results/tied_search/<name>_<case>.xyz (a start for ``atomsplat.training.train``'s
``init_atoms``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from start_basin import disturbed, sirt_start

from atomsplat.analysis.matching import evaluate, match_atoms
from atomsplat.data.dataparser import split_indices
from atomsplat.data.formats import read_tilt_series
from atomsplat.model.cloud import AtomShape, series_views
from atomsplat.model.losses import NoiseModel
from atomsplat.render.projector import project_isotropic

ROOT = Path(__file__).resolve().parents[1]
CASE = re.compile(r"^(sirt|jitter([0-9.]+))(-blur)?$")
POSITION_RATE = 0.02  # A per step; over the last COOLING steps it falls exponentially to a tenth
COOLING = 400
SHARED_RATE = 0.01  # log units per step: the shared width and halo
VIEWS_PER_STEP = 6
START_WIDTH = 0.45  # A


def parse_case(name: str) -> dict:
    """A case name's start ("sirt" or the jitter in A per axis) and whether it blurs."""
    match = CASE.match(name)
    if match is None:
        raise ValueError(f"case {name!r}: expected sirt or jitter<A>, optionally with -blur")
    return {"sirt": match.group(1) == "sirt", "jitter": float(match.group(2) or 0.0), "blur": bool(match.group(3))}


def border_pedestal(series, train: np.ndarray) -> float:
    """The pedestal (counts per pixel): the median of the outer 8 columns of projections ``train``."""
    projections = series.projections[train]
    return float(np.median(np.concatenate([projections[:, :, :8].ravel(), projections[:, :, -8:].ravel()])))


def mean_signal(series, train: np.ndarray, pedestal: float) -> float:
    """The mean signal of projections ``train`` above ``pedestal`` (counts per pixel): counts x A^2."""
    height, width = series.projections.shape[1:]
    counts = series.projections[train].sum(axis=(1, 2)) - pedestal * height * width
    return float(counts.mean()) * series.pixel_size**2


class TiedFit:
    """K Gaussians of one weight, width and halo fitted by their positions to count projections.

    ``pedestal`` (counts per pixel) defaults to :func:`border_pedestal`, ``weight`` (counts x A^2 per
    Gaussian) to the mean signal (:func:`mean_signal`) over the start's count."""

    def __init__(
        self,
        series,
        train: np.ndarray,
        start: np.ndarray,
        repel: float = 0.0,
        stiffness: float = 0.0,
        pedestal: float | None = None,
        weight: float | None = None,
    ):
        self.series, self.train = series, train
        self.repel, self.stiffness = repel, stiffness
        self.measured = torch.from_numpy(series.projections.astype(np.float32))
        self.noise = NoiseModel("poisson")
        height, width = self.measured.shape[1:]
        self.ones = torch.ones(1, height, width)
        self.pedestal = border_pedestal(series, train) if pedestal is None else pedestal
        if weight is None:  # counts x A^2 per Gaussian
            weight = mean_signal(series, train, self.pedestal) / len(start)
        self.weight = weight
        self.positions = torch.nn.Parameter(torch.from_numpy(start).float())
        self.log_sigma = torch.nn.Parameter(torch.tensor(math.log(START_WIDTH)))
        self.shape = AtomShape()
        self.optimizer = torch.optim.Adam(
            [
                {"params": [self.positions], "lr": POSITION_RATE},
                {"params": [self.log_sigma, *self.shape.params.values()], "lr": SHARED_RATE},
            ]
        )

    def project(self, views, blur: float) -> torch.Tensor:
        """(V, H, W) the Gaussians' projections, blurred by a Gaussian of ``blur`` A."""
        count, sigma = len(self.positions), self.log_sigma.exp()
        fraction, ratio = self.shape.fraction(), self.shape.ratio()
        core, halo = torch.sqrt(sigma**2 + blur**2), torch.sqrt((ratio * sigma) ** 2 + blur**2)
        return project_isotropic(
            torch.cat([self.positions, self.positions]),
            torch.cat([core.expand(count), halo.expand(count)]),
            torch.cat([((1 - fraction) * self.weight).expand(count), (fraction * self.weight).expand(count)]),
            views.rotations, views.offsets, views.pixel_size, views.height, views.width,
        )  # fmt: skip

    def measured_of(self, indices: np.ndarray, blur: float) -> torch.Tensor:
        images = self.measured[indices]
        if blur <= 0:
            return images
        spread = blur / self.series.pixel_size
        return torch.from_numpy(np.stack([gaussian_filter(image, spread, mode="nearest") for image in images.numpy()]))

    def data_term(self, indices: np.ndarray, blur: float) -> torch.Tensor:
        """The summed Poisson data term (nats) of projections ``indices``, each view's pedestal solved."""
        model = self.project(series_views(self.series, indices), blur)
        measured = self.measured_of(indices, blur)
        start = torch.full((len(indices), 1), self.pedestal)
        pedestal = self.noise.fit_linear(model.detach(), measured, self.ones, start)
        return self.noise.pixels(model + pedestal[:, :, None], measured).sum(dtype=torch.float64)

    def overlap(self) -> torch.Tensor:
        """The soft minimum distance, nats per view: ``stiffness`` (nats per view per A^2) x the sum
        over pairs closer than ``repel`` A of (``repel`` - distance)^2; 0 when ``repel`` is 0."""
        if self.repel <= 0:
            return self.positions.new_zeros(())
        tree = cKDTree(self.positions.detach().numpy())
        pairs = torch.from_numpy(tree.query_pairs(self.repel, output_type="ndarray"))
        if len(pairs) == 0:
            return self.positions.new_zeros(())
        gaps = (self.positions[pairs[:, 0]] - self.positions[pairs[:, 1]]).norm(dim=1)
        return self.stiffness * ((self.repel - gaps).clamp_min(0) ** 2).sum()

    def step(self, indices: np.ndarray, blur: float) -> None:
        self.optimizer.zero_grad()
        (self.data_term(indices, blur) / len(indices) + self.overlap()).backward()
        self.optimizer.step()

    def training_data_term(self) -> torch.Tensor:
        """The summed data term (nats) of all training projections, unblurred, 9 views at a time."""
        return sum(self.data_term(self.train[k : k + 9], 0.0) for k in range(0, len(self.train), 9))

    @torch.no_grad()
    def negative_log_likelihood(self) -> float:
        """Nats over all training projections, unblurred (up to a constant of the data)."""
        return float(self.training_data_term())


def search(fit: TiedFit, steps: int, blur: float, blur_steps: int, record=None) -> None:
    """``steps`` Adam steps of ``fit`` over its training views (:data:`VIEWS_PER_STEP` a step, in one
    fixed random order), data and model blurred by ``blur`` A falling linearly to 0 over
    ``blur_steps`` (``blur`` 0: none), the positions' rate cooled over the last :data:`COOLING` steps;
    ``record(step, blur)`` is called every 100 steps and at the end."""
    train = fit.train
    order = np.random.default_rng(0).permutation(len(train))
    for step in range(steps):
        now = blur * max(0.0, 1.0 - step / blur_steps)
        cooled = min(1.0, max(0.0, (step - (steps - COOLING)) / COOLING))
        fit.optimizer.param_groups[0]["lr"] = POSITION_RATE * 0.1**cooled
        picks = order[(step * VIEWS_PER_STEP + np.arange(VIEWS_PER_STEP)) % len(train)]
        fit.step(train[picks], now)
        if record is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            record(step + 1, now)


def write_positions(path: Path, positions: np.ndarray) -> None:
    """Write a fit's Gaussians (K, 3) A to ``path`` as XYZ of element X: positions with no species
    (a start for another fit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, ase.Atoms(["X"] * len(positions), positions))


def misses(positions: np.ndarray, truth: np.ndarray) -> dict:
    """Where a fit's false Gaussians and missed atoms (A, unmatched within 0.75 A) lie: medians of the
    false ones' distances to the nearest atom and to the nearest other Gaussian, the share of them
    whose nearest atom is a missed one, and the missed atoms' median distance to the nearest Gaussian
    (None where there are no false Gaussians or no missed atoms)."""
    found, matched, _ = match_atoms(positions, truth, 0.75)
    false = np.setdiff1d(np.arange(len(positions)), found)
    missed = np.setdiff1d(np.arange(len(truth)), matched)

    def median(values: np.ndarray):
        return round(float(np.median(values)), 3) if len(values) else None

    to_atom, nearest = cKDTree(truth).query(positions[false])
    to_other = cKDTree(positions).query(positions[false], k=2)[0][:, 1]
    return {
        "false_to_atom_median": median(to_atom),
        "false_to_other_gaussian_median": median(to_other),
        "false_nearest_atom_missed": round(float(np.isin(nearest, missed).mean()), 3) if len(false) else None,
        "missed_to_gaussian_median": median(cKDTree(positions).query(truth[missed])[0]),
    }


def run_case(
    data: Path,
    label: str,
    name: str,
    steps: int,
    blur: float,
    blur_steps: int,
    repel: float,
    stiffness: float,
    count: float,
) -> dict:
    case = parse_case(name)
    series = read_tilt_series(data)
    truth = ase.io.read(data / "ground_truth.xyz")
    if case["sirt"]:
        start = sirt_start(data, truth, int(round(count * len(truth))))
    else:
        start = disturbed(truth, case["jitter"], 0.0, 0.0)
    train = split_indices(len(series.projections), "train", 10)
    fit = TiedFit(series, train, start.positions, repel, stiffness)
    first = evaluate(start.positions, truth.positions)
    rows = [{"step": 0, "tpr": round(first.tpr, 4), "fpr": round(first.fpr, 4)}]

    def record(step: int, now: float) -> None:
        score = evaluate(fit.positions.detach().numpy(), truth.positions)
        rows.append({"step": step, "tpr": round(score.tpr, 4), "fpr": round(score.fpr, 4), "blur": round(now, 3)})
        print(f"  {name} step {step}: {score.tpr:.3f} / {score.fpr:.3f} (blur {now:.2f} A)", flush=True)

    began = time.perf_counter()
    search(fit, steps, blur if case["blur"] else 0.0, blur_steps, record)
    seconds = time.perf_counter() - began
    positions = fit.positions.detach().numpy()
    end = ROOT / "results" / "tied_search" / f"{label}_{name}.xyz"
    end.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(end, ase.Atoms(start.get_chemical_symbols(), positions))
    _, _, distances = match_atoms(positions, truth.positions, 0.75)
    return {
        "case": name,
        **case,
        "gaussians": len(start),
        "weight": fit.weight,
        "passes": rows,
        "matched_distance_median": round(float(np.median(distances)), 4),
        "matched_distance_rms": round(float(np.sqrt(np.mean(distances**2))), 4),
        **misses(positions, truth.positions),
        "width": round(float(fit.log_sigma.detach().exp()), 4),
        "halo": [round(float(fit.shape.fraction().detach()), 4), round(float(fit.shape.ratio().detach()), 4)],
        "negative_log_likelihood": round(fit.negative_log_likelihood(), 1),
        "seconds": round(seconds, 1),
    }


def plot(results: list, path: Path, title: str) -> None:
    from atomsplat.report import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6.4, 4.0))
    for k, result in enumerate(results):
        steps = [row["step"] for row in result["passes"]]
        ax.plot(steps, [row["tpr"] for row in result["passes"]], "-", color=f"C{k}", label=f"{result['case']} TPR")
        ax.plot(steps, [row["fpr"] for row in result["passes"]], "--", color=f"C{k}", label="FPR")
    ax.set(xlabel="step", ylim=(0.0, 1.0), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--name", default=None)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--blur", type=float, default=1.0, help="A: the -blur cases' starting blur")
    parser.add_argument("--blur-steps", type=int, default=1200, help="steps over which the blur falls to 0")
    parser.add_argument("--cases", nargs="+", default=["sirt", "sirt-blur", "jitter0.5"])
    parser.add_argument("--repel", type=float, default=0.0, help="A: soft minimum distance of the Gaussians (0: none)")
    parser.add_argument("--stiffness", type=float, default=200.0, help="nats per view per A^2 of the overlap")
    parser.add_argument("--count", type=float, default=1.0, help="sirt cases: Gaussians per true atom")
    args = parser.parse_args()
    for case in args.cases:
        parse_case(case)
    name = args.name or args.data.name
    results = []
    for case in args.cases:
        result = run_case(
            args.data, name, case, args.steps, args.blur, args.blur_steps, args.repel, args.stiffness, args.count
        )
        results.append(result)
        last = result["passes"][-1]
        print(
            f"{case:>12}: {result['passes'][0]['tpr']:.3f} -> {last['tpr']:.3f} / {last['fpr']:.3f}, matched "
            f"{result['matched_distance_median']:.2f} A median off, -log L {result['negative_log_likelihood']:.1f} "
            f"nats, {result['seconds'] / 60:.1f} min",
            flush=True,
        )
    report = {"data": str(args.data), "steps": args.steps, "blur": args.blur, "blur_steps": args.blur_steps}
    report.update({"repel": args.repel, "stiffness": args.stiffness} if args.repel > 0 else {})
    report.update({"count": args.count} if args.count != 1.0 else {})
    out = ROOT / "docs" / "benchmarks" / f"tied_search_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "cases": results}, indent=1) + "\n")
    plot(results, ROOT / "docs" / "figures" / f"tied_search_{name}.png", f"{name}: positions only, weight tied")


if __name__ == "__main__":
    main()
