"""``atomsplat-benchmark``: every method on every particle and tilt scheme, with tables and figures.

    atomsplat-benchmark --preset quick --output results/quick     # minutes on 2 CPU cores
    atomsplat-benchmark --preset full --output results/full       # what docs/benchmarks.md reports

Presets are the JSON files in ``configs/`` (``benchmark_<name>.json``) or a path to one
(:mod:`atomsplat.benchmark.preset`). The output directory gets ``results.json``, ``results.md`` and
``figures/``; simulated tilt series, training runs and each method's finished result go to
``--work`` and are reused by later runs with the same settings: the same command run again after
an interruption goes on where it stopped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import tyro


@dataclass
class Benchmark:
    """Run every method of a preset on every particle and tilt scheme; write results.json,
    results.md and figures/ into --output. Simulated tilt series, training runs and each method's
    finished result go to --work and are reused by later runs with the same settings, so the same
    command run again after an interruption goes on where it stopped.

        atomsplat-benchmark --preset quick --output results/quick   # minutes on 2 CPU cores
        atomsplat-benchmark --preset full --output results/full     # what docs/benchmarks.md reports
    """

    # Results directory to write (results.json, results.md, figures/).
    output: Path
    # Preset: quick, full, another name of configs/benchmark_<name>.json, or a path to a preset file.
    preset: str = "quick"
    # Simulated data, training runs and finished method results, reused by later runs with the same
    # settings (None: OUTPUT/work).
    work: Optional[Path] = None
    # Run only these particles of the preset (none given: all).
    particles: Tuple[str, ...] = ()
    # Run only these tilt schemes of the preset, by name (none given: all).
    schemes: Tuple[str, ...] = ()
    # Run only these methods (none given: the preset's): the preset's options for those it lists,
    # the defaults for any other registered method.
    methods: Tuple[str, ...] = ()
    # Run the preset's ablation (--no-ablation skips it).
    ablation: bool = True
    # Replace results of other settings already in --output.
    overwrite: bool = False

    def main(self) -> None:
        """Run the preset as chosen and print the tables; :class:`BenchmarkError` on bad choices."""
        from atomsplat.benchmark import BenchmarkError
        from atomsplat.benchmark.methods import METHODS
        from atomsplat.benchmark.preset import load_preset
        from atomsplat.benchmark.run import run_comparison

        preset = load_preset(self.preset)
        for name, chosen, available in (
            ("particles", self.particles, preset.particles),
            ("schemes", self.schemes, list(preset.schemes)),
        ):
            if set(chosen) - set(available):
                raise BenchmarkError(
                    f"--{name}: {sorted(set(chosen) - set(available))} not in the preset ({available})"
                )
        if set(self.methods) - set(METHODS):
            raise BenchmarkError(
                f"--methods: unknown {sorted(set(self.methods) - set(METHODS))}; methods: {', '.join(sorted(METHODS))}"
            )
        if self.particles:
            preset.particles = list(self.particles)
        if self.schemes:
            preset.schemes = {k: v for k, v in preset.schemes.items() if k in self.schemes}
        if self.methods:
            preset.methods = {m: preset.methods.get(m, {}) for m in self.methods}
        if not self.ablation:
            preset.ablation = None
        if not (preset.particles and preset.schemes and preset.methods) and not preset.ablation:
            raise BenchmarkError("nothing to run: no particle, scheme or method chosen and no ablation")
        self._check_output(preset.to_dict())
        results = run_comparison(preset, self.output, self.work or self.output / "work")
        print((self.output / "results.md").read_text())
        print(f"results: {self.output / 'results.md'}, figures: {self.output / 'figures'}")
        if not (results.rows or results.ablation):
            raise BenchmarkError("no results")

    def _check_output(self, preset: dict) -> None:
        """Refuse an --output that holds results of other settings, unless --overwrite."""
        from atomsplat.benchmark import BenchmarkError
        from atomsplat.benchmark.preset import Preset

        previous = self.output / "results.json"
        if not previous.exists() or self.overwrite:
            return
        try:  # read as a preset: fields added since it was written take their defaults
            held = Preset.from_dict(json.loads(previous.read_text()).get("preset"), str(previous)).to_dict()
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, BenchmarkError):
            held = None
        if held != preset:
            raise BenchmarkError(
                f"{self.output} already holds results of other settings; choose another --output or pass --overwrite"
            )


def main(argv=None) -> int:
    """Parse ``argv`` (default: the command line), run, and return the exit status: 0, or 2 with
    a one-line message on stderr for a bad preset, choice or output directory."""
    from atomsplat.benchmark import BenchmarkError

    benchmark = tyro.cli(Benchmark, args=argv, prog="atomsplat-benchmark")
    try:
        benchmark.main()
    except BenchmarkError as err:
        print(f"atomsplat-benchmark: error: {err}", file=sys.stderr)
        return 2
    return 0


def entrypoint():
    """Entrypoint for the ``atomsplat-benchmark`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
