"""How close does the start come to the atoms? The initial peaks against the truth, by reconstruction.

    python benchmarks/init_peaks.py DATA [DATA ...] [--settings 20x1 10x10 ...] [--name NAME]

For each dataset (with ground_truth.xyz) the method's own start, as ``ns-train atomsplat`` makes it
with its defaults (``init_support="peaks"``: the local maxima of a quick reconstruction of the
training projections less their fitted pedestal, :func:`atomsplat.model.init.initial_positions`),
with the reconstruction's iterations and ordered subsets set to each ``ITERATIONSxSUBSETS`` of
``--settings`` (20x1: 20 passes of SIRT; 10x10: 10 passes of OS-SART over 10 subsets), matched to
the true atoms (:func:`atomsplat.analysis.matching.evaluate`, 0.75 A): the Gaussians it starts with,
TPR, FPR and the seconds it took.

Writes docs/benchmarks/init_peaks_<name>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from unittest import mock

import ase.io
import torch

ROOT = Path(__file__).resolve().parents[1]


def starts(data: Path, settings: list) -> list:
    """[{setting, atoms, gaussians, tpr, fpr, seconds}] of the default start of ``data`` per setting."""
    from atomsplat.analysis.matching import evaluate
    from atomsplat.method import atomsplat
    from atomsplat.model import init

    config = atomsplat.config
    config.pipeline.datamanager.data = data
    model = config.pipeline.setup(device="cpu", test_mode="inference").model
    signal = model.measured
    if model.corrections.has_background:
        signal = signal - model.corrections.background_of(torch.arange(len(signal)))
    truth = ase.io.read(data / "ground_truth.xyz").positions
    rows = []
    for setting in settings:
        iterations, subsets = (int(x) for x in setting.split("x"))
        reconstruction = functools.partial(init.reconstruction, iterations=iterations, subsets=subsets)
        start = time.perf_counter()
        with mock.patch.object(init, "reconstruction", reconstruction):
            positions = init.initial_positions(model.series, signal, model.config, torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        scores = evaluate(positions.numpy(), truth)
        rows.append(
            {
                "setting": setting,
                "atoms": len(truth),
                "gaussians": len(positions),
                "tpr": round(scores.tpr, 4),
                "fpr": round(scores.fpr, 4),
                "seconds": round(seconds, 1),
            }
        )
        print(data.name, rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="+")
    parser.add_argument("--settings", nargs="+", default=["20x1", "10x10"], help="ITERATIONSxSUBSETS")
    parser.add_argument("--name", default="si_d8000")
    args = parser.parse_args()
    results = {str(data): starts(data, args.settings) for data in args.data}
    out = ROOT / "docs" / "benchmarks" / f"init_peaks_{args.name}.json"
    out.write_text(json.dumps({"settings": args.settings, "datasets": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
