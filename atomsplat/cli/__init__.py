"""The console scripts of ``pyproject.toml``, one module each: a dataclass parsed by tyro, whose ``main()`` runs it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Literal, NoReturn, Optional

import tyro
from tyro.conf import arg

# Markers every command is parsed with: an optional value cannot be given as the string "None", and a
# boolean option is a plain flag (--overwrite) without a --no-overwrite twin.
TYRO_CONFIG = (tyro.conf.DisallowNone, tyro.conf.FlagCreatePairsOff)


def fail(prog: str, message: str) -> NoReturn:
    """Stop ``prog`` on bad input: ``prog: error: message`` as one line on stderr and exit status 2,
    the status tyro gives a bad argument."""
    print(f"{prog}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    sys.exit(2)


@dataclass
class EngineFlags:
    """How the cases run: as Ray tasks (on this machine, or on a running cluster with --ray-address), or one after
    another in this process (--engine serial)."""

    engine: Literal["ray", "serial"] = "ray"
    """ray: each case a Ray task with its CPUs (and a GPU where there are any); serial: one case after another in
    this process, without Ray"""
    ray_address: Annotated[Optional[str], arg(metavar="ADDRESS", help_behavior_hint="(default: start Ray here)")] = None
    """a running Ray cluster (auto, HOST:6379, ray://HOST:10001) whose nodes have atomsplat installed and see the
    same data and output paths"""
    workers: Annotated[Optional[int], arg(metavar="N", help_behavior_hint="(default: as the cores allow)")] = None
    """cases at once on a Ray started here (Ray gets N x cpus-per-job CPUs)"""
    cpus_per_job: Annotated[Optional[int], arg(metavar="N", help_behavior_hint="(default: see above)")] = None
    """CPUs (threads) of each case; default 1 under Ray (with --workers: the cores shared among them), all the
    process has in the serial engine; the same number gives the same results in both engines"""
    gpus_per_job: Annotated[Optional[float], arg(metavar="N", help_behavior_hint="(default: 1 where Ray has GPUs)")] = (
        None
    )
    """GPUs of each case that trains on one (fractions share a GPU)"""

    def options(self):
        """The :class:`atomsplat.batch.engine.EngineOptions` of these flags."""
        from atomsplat.batch.engine import EngineOptions

        return EngineOptions(self.engine, self.ray_address, self.workers, self.cpus_per_job, self.gpus_per_job)
