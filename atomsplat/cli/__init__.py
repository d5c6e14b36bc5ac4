"""The console scripts of ``pyproject.toml``, one module each: a dataclass parsed by tyro, whose ``main()`` runs it."""

from __future__ import annotations

import sys
from typing import NoReturn

import tyro

# Markers every command is parsed with: an optional value cannot be given as the string "None", and a
# boolean option is a plain flag (--overwrite) without a --no-overwrite twin.
TYRO_CONFIG = (tyro.conf.DisallowNone, tyro.conf.FlagCreatePairsOff)


def fail(prog: str, message: str) -> NoReturn:
    """Stop ``prog`` on bad input: ``prog: error: message`` as one line on stderr and exit status 2,
    the status tyro gives a bad argument."""
    print(f"{prog}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    sys.exit(2)
