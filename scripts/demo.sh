#!/usr/bin/env bash
# Set up, then train on the bundled tilt series, export the atoms and print how well they match.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
exec "$root/.venv/bin/atomsplat-demo" "$@"
