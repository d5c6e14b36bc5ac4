"""A counts dataset as a real microscope would record it: to test atomsplat on what we did not make.

    python benchmarks/microscope_effects.py SOURCE OUTPUT [--dose-drift 0.8] [--ramp 1]
        [--per-count 37 --offset 1000 --read-noise 20] [--seed 0]

SOURCE: a dataset directory of whole-number counts (``atomsplat-simulate --dose``). The effects,
in this order, each drawn from its own generator seeded by ``--seed``:

- ``--dose-drift LOW``: each projection's dose times a factor drawn uniformly from [LOW, 1] (the
  beam current drifting), by binomial thinning of its counts: still exactly Poisson.
- ``--ramp AMP``: Poisson counts of a plane added to each projection, rising from 0 to AMP counts
  across the field in a random direction (a support film's thickness gradient).
- ``--per-count G --offset B --read-noise R``: the counts k read as G * k + B data units plus
  Gaussian noise of R data units (a scintillator detector); the default, 1, 0, 0, keeps them.

OUTPUT gets the result as float32, with the tilt angles, the ground truth and metadata.json; a
changed reading drops ``"counts"``, ``"gain"`` and ``"offset"`` from it (a microscope's file that
declares nothing; the effects are kept under ``"microscope"``), so that ``ns-train atomsplat
--data OUTPUT`` must find the counts from their noise (:mod:`atomsplat.data.photon_transfer`).
Refuses an existing OUTPUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import tifffile

from atomsplat.data.series import GROUND_TRUTH, METADATA
from atomsplat.data.tiff_dataset import ANGLES, PROJECTIONS


def drifted(counts: np.ndarray, low: float, seed: int) -> np.ndarray:
    """``counts`` (N, H, W) with projection k's dose times f_k ~ U[low, 1], by binomial thinning."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform(low, 1.0, len(counts))
    return np.stack([rng.binomial(page.astype(np.int64), f) for page, f in zip(counts, factors)]).astype(np.float64)


def with_ramp(counts: np.ndarray, amplitude: float, seed: int) -> np.ndarray:
    """``counts`` (N, H, W) plus Poisson counts of a plane from 0 to ``amplitude`` across the field
    (corner to corner along a random direction per projection)."""
    rng = np.random.default_rng(seed)
    _, height, width = counts.shape
    y, x = np.mgrid[:height, :width] / (height - 1)
    pages = []
    for page in counts:
        angle = rng.uniform(0, 2 * np.pi)
        across = (np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5)) / np.sqrt(0.5)  # -1 to 1
        pages.append(page + rng.poisson(amplitude * (across + 1) / 2))
    return np.asarray(pages, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--dose-drift", type=float, default=None, help="lowest dose factor, in (0, 1]")
    parser.add_argument("--ramp", type=float, default=None, help="counts the plane rises by across the field")
    parser.add_argument("--per-count", type=float, default=1.0, help="data units a count")
    parser.add_argument("--offset", type=float, default=0.0, help="data units at zero counts")
    parser.add_argument("--read-noise", type=float, default=0.0, help="standard deviation, data units")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = tifffile.imread(args.source / PROJECTIONS).astype(np.float64)
    if not np.array_equal(np.rint(counts), counts) or counts.min() < 0:
        raise SystemExit(f"{args.source / PROJECTIONS}: not whole-number counts")
    if args.output.exists():
        raise SystemExit(f"{args.output}: exists; choose another output")
    if args.dose_drift is not None:
        counts = drifted(counts, args.dose_drift, args.seed)
    if args.ramp is not None:
        counts = with_ramp(counts, args.ramp, args.seed)
    read = (args.per_count, args.offset, args.read_noise) != (1.0, 0.0, 0.0)
    noise = np.random.default_rng(args.seed).normal(0.0, args.read_noise, counts.shape) if args.read_noise else 0.0
    result = (args.per_count * counts + args.offset + noise).astype(np.float32)
    meta = json.loads((args.source / METADATA).read_text())
    if read:
        for key in ("counts", "gain", "offset"):
            meta.pop(key, None)
    effects = {"dose_drift": args.dose_drift, "ramp": args.ramp, "seed": args.seed}
    meta["microscope"] = {**effects, "per_count": args.per_count, "offset": args.offset, "read_noise": args.read_noise}
    args.output.mkdir(parents=True)
    tifffile.imwrite(args.output / PROJECTIONS, result, photometric="minisblack")
    for name in (ANGLES, GROUND_TRUTH):
        if (args.source / name).exists():
            shutil.copy(args.source / name, args.output / name)
    (args.output / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{args.output}: {len(counts)} projections, {meta['microscope']}")


if __name__ == "__main__":
    main()
