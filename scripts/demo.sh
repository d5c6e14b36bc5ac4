#!/usr/bin/env bash
# Set up, then train on the bundled tilt series, export the atoms and print how well they match.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec atomsplat-demo "$@"
