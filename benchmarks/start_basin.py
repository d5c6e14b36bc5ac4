"""From how wrong a start does training still find the atoms? The fit started at the true atoms, disturbed.

    python benchmarks/start_basin.py DATA [--steps 600] [--name si9nm_d8000] [--position-lr 0.01]
        [--cases jitter0.3 missing20 ...]

DATA: a dataset with ground_truth.xyz. Each case starts training at the true atoms disturbed in one
way, with the method's defaults otherwise (every 10th projection held out, no final refinement,
density control as it is until ``--steps``, no duplication, positions' starting rate
``--position-lr``), and records TPR / FPR at every density pass:

- ``jitter<S>``: every atom moved by a normal step of S A per axis (the positions to find);
- ``missing<P>``: P % of the atoms left out (births must find them);
- ``false<P>``: P % as many false Gaussians planted inside the particle, each at least
  ``evidence_depth.PLANT_GAP`` from every atom (selection must remove them);
- ``both<P>``: P % missing and P % false;
- ``sirt``: not the truth but the classical start at its best count: the strongest local maxima of
  a 60-pass SIRT of the training projections less their border pedestal, smoothed over
  :data:`SIRT_SMOOTHING`, at least the merge distance apart, as many as there are true atoms
  (:func:`sirt_start`): where training goes from a start of the right size whose Gaussians
  are where a reconstruction, not the atoms, puts them;
- a case name ending in ``-evidence`` or ``-weight`` sets the selection (default: the method's).

It separates the two halves of the problem at scale: where the Gaussians go once the topology (which
Gaussians are atoms) is right, and whether training can change a wrong topology.

Writes docs/benchmarks/start_basin_<name>.json and docs/figures/start_basin_<name>.png (TPR and FPR
against the step, per case).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import re
import tempfile
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
from evidence_depth import plant

from atomsplat.analysis.matching import evaluate
from atomsplat.training import train

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CASES = ("jitter0.3-weight", "jitter0.5-weight", "missing20-weight", "false20-weight", "both20-weight")

CASE = re.compile(r"^(?:(jitter|missing|false|both)([0-9.]+)|(sirt))(?:-(evidence|weight))?$")

SIRT_ITERATIONS = 60
SIRT_SMOOTHING = 0.3
"""A: the "sirt" start's reconstruction and smoothing. On the 9 nm Si particle at 8e3 e/A^2, measured
before this case with an exploratory script (maxima 1.29 A apart, another tenth of the projections
held out), the top 19,133 maxima: 20 passes 0.557 / 0.443 smoothed over 0.3 A, 0.384 / 0.352 at
0.5 A (11,331 maxima in all); 60 passes 0.600 / 0.400 at 0.3 A; the strongest 1,000 already 28 %
false. This case's own start (60 passes, 0.3 A): 0.595 / 0.405."""


def parse_case(name: str) -> dict:
    """The disturbance of a case name (module docstring): jitter (A per axis), missing and false
    (fractions of the atoms), selection (None: the method's)."""
    match = CASE.match(name)
    if match is None:
        raise ValueError(
            f"case {name!r}: expected jitter<A>, missing<%>, false<%>, both<%> or sirt, optionally -evidence or -weight"
        )
    kind, selection = match.group(1) or match.group(3), match.group(4)
    amount = float(match.group(2)) if match.group(2) else 0.0
    fraction = amount / 100.0
    if kind in ("missing", "false", "both") and not 0.0 < fraction < 1.0:
        raise ValueError(f"case {name!r}: a percentage between 0 and 100")
    return {
        "jitter": amount if kind == "jitter" else 0.0,
        "missing": fraction if kind in ("missing", "both") else 0.0,
        "false": fraction if kind in ("false", "both") else 0.0,
        "selection": selection,
        "sirt": kind == "sirt",
    }


def disturbed(truth: ase.Atoms, jitter: float, missing: float, false: float, seed: int = 0) -> ase.Atoms:
    """The true atoms with a ``missing`` fraction left out, the rest moved by normal steps of ``jitter``
    A per axis, and ``false`` x their count false Gaussians planted inside the particle
    (:func:`evidence_depth.plant`, at least ``PLANT_GAP`` from every true atom, the left-out ones too)."""
    rng = np.random.default_rng(seed)
    keep = rng.random(len(truth)) >= missing
    start = truth[keep]
    start.positions = start.positions + rng.normal(0.0, jitter, size=start.positions.shape)
    count = int(round(false * len(truth)))
    if count:
        inside, _ = plant(truth.positions, count, seed)
        start += ase.Atoms([truth.get_chemical_symbols()[0]] * count, inside)
    return start


def sirt_start(data: Path, truth: ase.Atoms, count: int = None) -> ase.Atoms:
    """The strongest local maxima (A, sample frame), ``count`` of them (None: as many as ``truth``
    has atoms; fewer where the reconstruction has fewer), of a
    :data:`SIRT_ITERATIONS`-pass SIRT of the training projections of ``data`` (every 10th held out,
    as training holds it out) less their border pedestal (:func:`atomsplat.model.init.reconstruction`),
    smoothed over :data:`SIRT_SMOOTHING` A inside the initialisation's support
    (:func:`atomsplat.model.init.particle_support`), at least the merge distance apart
    (:func:`atomsplat.analysis.tracing.trace_atoms`)."""
    import torch
    from scipy.ndimage import gaussian_filter

    from atomsplat.analysis.tracing import trace_atoms
    from atomsplat.data.dataparser import split_indices
    from atomsplat.data.formats import read_tilt_series
    from atomsplat.model.atomsplat_model import AtomSplatModelConfig
    from atomsplat.model.corrections import background, background_basis, border_background
    from atomsplat.model.init import particle_support, reconstruction
    from atomsplat.model.strategy import minimum_distance

    series = read_tilt_series(data)
    stack = torch.from_numpy(series.projections.astype(np.float32))
    basis = background_basis(*stack.shape[1:], 0)
    signal = (stack - background(border_background(stack, basis), basis)).numpy()
    views = split_indices(len(stack), "train", 10)
    shifts = None if series.shifts is None else series.shifts[views]
    training = dataclasses.replace(  # the pedestal subtracted: no longer counts
        series, projections=signal[views], tilt_angles=series.tilt_angles[views], shifts=shifts, counts=False
    )
    config = AtomSplatModelConfig()
    volume, size = reconstruction(training, training.projections, config.init_voxel, SIRT_ITERATIONS)
    sharp = gaussian_filter(volume, SIRT_SMOOTHING / size, mode="constant") * particle_support(volume, size, config)
    traced = trace_atoms(sharp, size, min_distance=minimum_distance(series, config), threshold=0.0)
    positions = traced.positions[: len(truth) if count is None else count]
    return ase.Atoms([truth.get_chemical_symbols()[0]] * len(positions), positions)


def pass_scores(run: Path) -> list:
    """[(step, Gaussians after the pass, TPR, FPR)] of the density passes a run wrote to its
    tensorboard events (tags ``.../atoms/after``, ``.../atoms/tpr``, ``.../atoms/fpr``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = {}
    for events in sorted(run.glob("**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            key = tag.rsplit("/", 1)[-1]
            if tag.endswith(("atoms/after", "atoms/tpr", "atoms/fpr")):
                for event in accumulator.Scalars(tag):
                    rows.setdefault(event.step, {})[key] = event.value
    return [
        (step, int(row["after"]), round(row["tpr"], 4), round(row["fpr"], 4))
        for step, row in sorted(rows.items())
        if {"after", "tpr", "fpr"} <= row.keys()
    ]


def run_case(data: Path, name: str, steps: int, position_lr) -> dict:
    """Train from the disturbed truth of case ``name``; the start's and every pass's scores."""
    case = parse_case(name)
    truth = ase.io.read(data / "ground_truth.xyz")
    if case["sirt"]:
        start = sirt_start(data, truth)
    else:
        start = disturbed(truth, case["jitter"], case["missing"], case["false"])
    first = evaluate(start.positions, truth.positions)
    options = dict(holdout_every=10, init_support="atoms", final_refinement=False, densify_until=0.0)
    if case["selection"]:
        options["selection"] = case["selection"]
    if position_lr is not None:
        options["learning_rates"] = {"positions": position_lr}
    with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(io.StringIO()):
        ase.io.write(Path(work) / "start.xyz", start)
        began = time.perf_counter()
        train(data, steps, Path(work), init_atoms=Path(work) / "start.xyz", **options)
        seconds = time.perf_counter() - began
        passes = pass_scores(Path(work))
    return {
        "case": name,
        **case,
        "start": {"gaussians": len(start), "tpr": round(first.tpr, 4), "fpr": round(first.fpr, 4)},
        "passes": [{"step": s, "gaussians": g, "tpr": t, "fpr": f} for s, g, t, f in passes],
        "seconds": round(seconds, 1),
    }


def plot(results: list, path: Path, title: str) -> None:
    from atomsplat.report import pyplot, save_figure

    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8), sharex=True)
    for k, result in enumerate(results):
        steps = [0] + [row["step"] for row in result["passes"]]
        for ax, key in ((left, "tpr"), (right, "fpr")):
            values = [result["start"][key]] + [row[key] for row in result["passes"]]
            ax.plot(steps, values, marker="o", ms=3, color=f"C{k}", label=result["case"])
    left.set_ylabel("TPR")
    right.set_ylabel("FPR")
    for ax in (left, right):
        ax.set_xlabel("training step")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--name", default=None)
    parser.add_argument("--position-lr", type=float, default=None, help="positions' starting learning rate, A per step")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    args = parser.parse_args()
    for case in args.cases:
        parse_case(case)  # every name checked before hours of training
    name = args.name or args.data.name
    results = []
    for case in args.cases:
        result = run_case(args.data, case, args.steps, args.position_lr)
        results.append(result)
        last = result["passes"][-1] if result["passes"] else result["start"]
        print(
            f"{case:>16}: start {result['start']['tpr']:.3f} / {result['start']['fpr']:.3f} "
            f"({result['start']['gaussians']} Gaussians), after {args.steps} steps {last['tpr']:.3f} / "
            f"{last['fpr']:.3f} ({last['gaussians']}), {result['seconds'] / 60:.1f} min",
            flush=True,
        )
    report = {"data": str(args.data), "steps": args.steps, "position_lr": args.position_lr, "cases": results}
    out = ROOT / "docs" / "benchmarks" / f"start_basin_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    lr = "" if args.position_lr is None else f", positions' rate {args.position_lr:g}"
    plot(results, ROOT / "docs" / "figures" / f"start_basin_{name}.png", f"{name}: from the disturbed truth{lr}")


if __name__ == "__main__":
    main()
