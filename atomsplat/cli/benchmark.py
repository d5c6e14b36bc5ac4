"""``atomsplat-benchmark``: every method on every particle and tilt scheme, with tables and figures.

    atomsplat-benchmark --preset quick --output results/quick     # minutes on 2 CPU cores
    atomsplat-benchmark --preset full --output results/full       # what docs/benchmarks.md reports

Presets are the JSON files in ``configs/`` (``benchmark_<name>.json``) or a path to one. The
output directory gets ``results.json``, ``results.md`` and ``figures/``; simulated tilt series,
training runs and each method's finished result go to ``--work`` and are reused by later runs with
the same settings: the same command run again after an interruption goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def preset_path(name: str) -> Path:
    """A preset by name (``configs/benchmark_<name>.json``) or by path."""
    path = Path(name)
    return path if path.suffix == ".json" or path.exists() else CONFIGS / f"benchmark_{name}.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="atomsplat-benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="quick", help="quick, full, or a preset file (default: %(default)s)")
    parser.add_argument("--output", type=Path, required=True, help="results directory to write")
    parser.add_argument("--work", type=Path, help="simulated data and training runs (default: OUTPUT/work)")
    parser.add_argument("--particles", nargs="+", help="run only these particles of the preset")
    parser.add_argument("--schemes", nargs="+", help="run only these tilt schemes of the preset (by name)")
    parser.add_argument("--methods", nargs="+", help="run only these methods of the preset")
    parser.add_argument("--no-ablation", action="store_true", help="skip the preset's ablation")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    args = parser.parse_args(argv)

    from atomsplat.comparison import load_preset, run_comparison

    try:
        preset = load_preset(preset_path(args.preset))
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    for name, chosen, available in (
        ("particles", args.particles, preset.particles),
        ("schemes", args.schemes, list(preset.schemes)),
        ("methods", args.methods, list(preset.methods)),
    ):
        if chosen and set(chosen) - set(available):
            parser.error(f"--{name}: {sorted(set(chosen) - set(available))} not in the preset ({available})")
    if args.particles:
        preset.particles = args.particles
    if args.schemes:
        preset.schemes = {k: v for k, v in preset.schemes.items() if k in args.schemes}
    if args.methods:
        preset.methods = {k: v for k, v in preset.methods.items() if k in args.methods}
    if args.no_ablation:
        preset.ablation = None
    previous = args.output / "results.json"
    if (
        previous.exists()
        and not args.overwrite
        and json.loads(previous.read_text()).get("preset") != json.loads(json.dumps(asdict(preset)))
    ):
        parser.error(
            f"{args.output} already holds results of other settings; choose another --output or pass --overwrite"
        )
    results = run_comparison(preset, args.output, args.work or args.output / "work")
    print((args.output / "results.md").read_text())
    print(f"results: {args.output / 'results.md'}, figures: {args.output / 'figures'}")
    return 0 if results["rows"] or results["ablation"] else 1


def entrypoint():
    sys.exit(main())
