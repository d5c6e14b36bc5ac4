"""What nerfstudio's command-line tools do with an atomsplat run, where they need telling.

Every ``ns-*`` tool loads a run through nerfstudio's ``eval_setup``, which builds atomsplat's data
manager first. ``ns-viewer``, ``ns-eval``, ``ns-render`` and ``ns-export gaussian-splat`` /
``cameras`` work on the run as they are. The other exports sample a radiance field along rays or
extract surfaces (``pointcloud``, ``tsdf``, ``poisson``, ``marching-cubes``): atoms have neither,
and nerfstudio would stop on them with a deep traceback (an AttributeError or an assertion), so
:func:`refuse_meaningless_tool` stops them first with one line that says what to use instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

EXPORTS_FOR_ATOMS = ("gaussian-splat", "cameras")
"""The ``ns-export`` subcommands that make sense for atoms."""
RAY_EXPORTS = ("pointcloud", "tsdf", "poisson", "marching-cubes")
"""The ``ns-export`` subcommands that sample rays or surfaces, which atoms do not have."""


def _is_exporter(program: str) -> bool:
    """Whether ``program`` (``argv[0]``) is nerfstudio's ``ns-export`` (the console script or the module)."""
    path = Path(program)
    return path.name == "ns-export" or path.parts[-3:] == ("nerfstudio", "scripts", "exporter.py")


def meaningless_tool(argv: Sequence[str]) -> Optional[str]:
    """The one-line message for a command line ``argv`` that asks nerfstudio for an export atoms
    cannot give (None for every other command)."""
    if not argv or not _is_exporter(argv[0]):
        return None
    subcommand = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
    if subcommand not in RAY_EXPORTS:
        return None
    return (
        f"ns-export {subcommand}: an atomsplat run holds atoms (Gaussians with a weight), not a radiance field or "
        f"surface to sample; use `ns-export gaussian-splat` (the Gaussians in A with their weights) or "
        f"`atomsplat-export` (the atoms)"
    )


def refuse_meaningless_tool(argv: Sequence[str]) -> None:
    """Exit with status 2 and :func:`meaningless_tool`'s one line on stderr, when there is one."""
    message = meaningless_tool(argv)
    if message is not None:
        print(message, file=sys.stderr)
        sys.exit(2)
