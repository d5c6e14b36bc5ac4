"""``atomsplat-benchmark``: every method on every particle and tilt scheme, with tables and figures.

    atomsplat-benchmark --preset quick --output results/quick     # minutes on 2 CPU cores
    atomsplat-benchmark --preset full --output results/full       # what docs/benchmarks.md reports
    atomsplat-benchmark --preset quick --output results/ns --methods atomsplat fbp sirt inr atomsplat-inr

Every method on every case is a job of :mod:`atomsplat.batch.engine`: a Ray task by default (Ray
started on this machine, or ``--ray-address`` of a running cluster), or one after another in this
process with ``--engine serial``. Presets are the JSON files in ``configs/``
(``benchmark_<name>.json``) or a path to one (:mod:`atomsplat.benchmark.preset`). The output
directory gets ``results.json``, ``results.md`` and ``figures/``; simulated tilt series, training
runs and each method's finished result go to ``--work`` and are reused by later runs with the same
settings: the same command run again after an interruption goes on where it stopped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Tuple

import tyro
from tyro.conf import OmitArgPrefixes

from atomsplat.cli import EngineFlags


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
    # the defaults for any other method, of the benchmark's (atomsplat, fbp, sirt, inr, ...) or
    # registered with nerfstudio (e.g. atomsplat-inr, splatfacto: trained on the same projections,
    # scored on the held-out ones; a method whose model downloads weights is skipped offline).
    methods: Tuple[str, ...] = ()
    # Run the preset's ablation (--no-ablation skips it).
    ablation: bool = True
    # Replace results of other settings already in --output.
    overwrite: bool = False
    # How the cases run (Ray here, a Ray cluster, or one after another).
    run: Annotated[EngineFlags, OmitArgPrefixes] = field(default_factory=EngineFlags)

    def main(self) -> int:
        """Run the preset as chosen and print the tables; :class:`BenchmarkError` on bad choices.
        Returns 0, or 1 when a case failed (the others are in the results)."""
        from atomsplat.batch.engine import EngineError
        from atomsplat.benchmark import BenchmarkError
        from atomsplat.benchmark.methods import METHODS
        from atomsplat.benchmark.preset import known_method, load_preset
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
        unknown = [m for m in self.methods if not known_method(m)]
        if unknown:
            raise BenchmarkError(
                f"--methods: unknown {sorted(unknown)}; methods: {', '.join(sorted(METHODS))}, or one registered "
                f"with nerfstudio (ns-train --help lists them)"
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
        engine = self.run.options()
        try:
            engine.check()
        except EngineError as err:
            raise BenchmarkError(str(err)) from None
        self._check_output(preset.to_dict())
        results, failures = run_comparison(preset, self.output, self.work or self.output / "work", engine=engine)
        print((self.output / "results.md").read_text())
        print(f"results: {self.output / 'results.md'}, figures: {self.output / 'figures'}")
        for failure in failures:
            print(f"atomsplat-benchmark: failed: {failure.summary()}", file=sys.stderr)
        if not (results.rows or results.ablation or failures):
            raise BenchmarkError("no results")
        return 1 if failures else 0

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
    """Parse ``argv`` (default: the command line), run, and return the exit status: 0; 1 when a
    case failed (named on stderr; the others are in the results); 2 with a one-line message on
    stderr for a bad preset, choice, engine option or output directory."""
    from atomsplat.benchmark import BenchmarkError

    benchmark = tyro.cli(Benchmark, args=argv, prog="atomsplat-benchmark")
    try:
        return benchmark.main()
    except BenchmarkError as err:
        print(f"atomsplat-benchmark: error: {err}", file=sys.stderr)
        return 2


def entrypoint():
    """Entrypoint for the ``atomsplat-benchmark`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
