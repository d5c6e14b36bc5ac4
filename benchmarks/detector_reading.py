"""A counts dataset as another detector would record it: to test the detection of counts.

    python benchmarks/detector_reading.py SOURCE OUTPUT [--per-count 37] [--offset 1000] [--read-noise 20]

SOURCE: a dataset directory of whole-number counts (``atomsplat-simulate --dose``). OUTPUT gets
its counts k read as ``per_count * k + offset`` data units plus Gaussian read noise of
``read_noise`` data units (seeded by ``--seed``), as float32, with the tilt angles, the ground
truth and metadata.json less ``"counts"``, ``"gain"`` and ``"offset"`` (a microscope's file that
declares nothing; the reading is kept under ``"detector"``). ``ns-train atomsplat --data OUTPUT``
must then find the counts from their noise (:mod:`atomsplat.data.photon_transfer`). Refuses an
existing OUTPUT.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--per-count", type=float, default=37.0, help="data units a count")
    parser.add_argument("--offset", type=float, default=1000.0, help="data units at zero counts")
    parser.add_argument("--read-noise", type=float, default=20.0, help="standard deviation, data units")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = tifffile.imread(args.source / PROJECTIONS).astype(np.float64)
    if not np.array_equal(np.rint(counts), counts) or counts.min() < 0:
        raise SystemExit(f"{args.source / PROJECTIONS}: not whole-number counts")
    if args.output.exists():
        raise SystemExit(f"{args.output}: exists; choose another output")
    noise = np.random.default_rng(args.seed).normal(0.0, args.read_noise, counts.shape) if args.read_noise else 0.0
    reading = (args.per_count * counts + args.offset + noise).astype(np.float32)
    meta = json.loads((args.source / METADATA).read_text())
    for key in ("counts", "gain", "offset"):
        meta.pop(key, None)
    meta["detector"] = {"per_count": args.per_count, "offset": args.offset, "read_noise": args.read_noise}
    args.output.mkdir(parents=True)
    tifffile.imwrite(args.output / PROJECTIONS, reading, photometric="minisblack")
    for name in (ANGLES, GROUND_TRUTH):
        if (args.source / name).exists():
            shutil.copy(args.source / name, args.output / name)
    (args.output / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    reading_of = f"{args.per_count:g} x counts + {args.offset:g} + N(0, {args.read_noise:g}^2)"
    print(f"{args.output}: {len(counts)} projections, {reading_of}")


if __name__ == "__main__":
    main()
