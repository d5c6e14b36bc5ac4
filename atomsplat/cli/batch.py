"""``atomsplat-batch``: atomsplat on many tilt series with one configuration, or a time series of one particle.

    atomsplat-batch data/np* --output results/batch [--steps 3000] [--config options.json]
    atomsplat-batch data/t0 data/t1 data/t2 --time-series --output results/series [--warm-steps 1500]

Each dataset is a job of :mod:`atomsplat.batch.engine`: a Ray task by default (Ray started on this
machine, or ``--ray-address`` of a running cluster), or one after another with ``--engine
serial``. See :mod:`atomsplat.batch.datasets` and :mod:`atomsplat.batch.timeseries` for what is
written; the same command run again keeps what finished.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Tuple

import tyro
from tyro.conf import OmitArgPrefixes, Positional, arg

from atomsplat.analysis.tracking import MAX_DISTANCE, SIGNIFICANCE
from atomsplat.cli import TYRO_CONFIG, EngineFlags, fail

PROG = "atomsplat-batch"


@dataclass
class Batch:
    """Train atomsplat on every dataset given (directories, MRC stacks, or glob patterns such as 'data/np*'), with one
    configuration; write each one's atoms to OUTPUT/<name>/atoms.xyz and a summary to OUTPUT/batch.md. With
    --time-series the datasets are the tilt series of one particle in time order: each later one starts from the
    atoms of the one before (--warm-steps), the drift of the sample between them is removed, and the atoms are
    followed across time into OUTPUT/trajectory.xyz (one frame per time) and OUTPUT/events.csv (atoms that appeared,
    vanished or moved). Finished datasets are kept: the same command run again goes on where it stopped."""

    data: Annotated[Tuple[str, ...], Positional, arg(metavar="DATA", help_behavior_hint="")]
    """datasets: directories, MRC stacks or glob patterns (matches in natural order: t2 before t10)"""
    output: Annotated[Path, arg(metavar="DIR")]
    """where the results go"""
    steps: int = 3000
    """training steps of each dataset (of the first frame of a time series)"""
    config: Annotated[Optional[Path], arg(metavar="OPTIONS.json", help_behavior_hint="")] = None
    """model options for every dataset as a JSON object, e.g. {"merge_distance": 1.2, "refine_shifts": true}"""
    method: str = "atomsplat"
    """atomsplat, or an ablation: atomsplat-noiso, atomsplat-nomerge"""
    pixel_size: Annotated[Optional[float], arg(metavar="A", help_behavior_hint="")] = None
    """detector pixel size in A for every dataset, overriding their own"""
    time_series: bool = False
    """the datasets are one particle in time order: warm starts, drift, atoms followed across time"""
    warm_steps: Annotated[Optional[int], arg(metavar="N", help_behavior_hint="(default: STEPS / 2)")] = None
    """training steps of each later frame of a time series, started from the atoms of the frame before"""
    max_distance: Annotated[float, arg(metavar="A")] = MAX_DISTANCE
    """time series: largest distance, A, between the places of one atom in consecutive frames"""
    significance: Annotated[float, arg(metavar="S")] = SIGNIFICANCE
    """time series: an atom moved when its displacement exceeds S standard deviations (from the position
    uncertainties of both frames)"""
    run: Annotated[EngineFlags, OmitArgPrefixes] = field(default_factory=EngineFlags)

    def main(self) -> int:
        """Run the batch or time series; bad input stops with a one-line error (exit status 2), a dataset that
        fails is reported and the others go on (exit status 1 when any failed)."""
        from atomsplat.batch.datasets import BatchError, check_options, expand, read_options, run_batch
        from atomsplat.batch.engine import EngineError
        from atomsplat.batch.timeseries import run_time_series

        try:
            if not self.data:
                raise BatchError("no datasets given")
            if self.steps < 1 or (self.warm_steps is not None and self.warm_steps < 1):
                raise BatchError("--steps and --warm-steps must be at least 1")
            if not (self.max_distance > 0 and self.significance > 0):
                raise BatchError("--max-distance and --significance must be positive")
            datasets = expand(self.data)
            options = read_options(self.config)
            check_options(self.method, options, str(self.config))
            engine = self.run.options()
            engine.check()
            if self.time_series and len(datasets) < 2:
                raise BatchError("--time-series needs at least two datasets")
        except (BatchError, EngineError) as err:
            fail(PROG, str(err))
        if self.time_series:
            frames, _, failures = run_time_series(
                datasets,
                self.output,
                self.steps,
                self.warm_steps or max(1, self.steps // 2),
                options,
                engine,
                self.method,
                self.pixel_size,
                self.max_distance,
                self.significance,
            )
            if frames:
                print((self.output.resolve() / "timeseries.md").read_text())
        else:
            _, failures = run_batch(datasets, self.output, self.steps, options, engine, self.method, self.pixel_size)
            print((self.output.resolve() / "batch.md").read_text())
        for failure in failures:
            print(f"{PROG}: failed: {failure.summary()}", file=sys.stderr)
        return 1 if failures else 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    return tyro.cli(Batch, prog=PROG, args=argv, config=TYRO_CONFIG).main()


def entrypoint():
    """Console script ``atomsplat-batch``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
