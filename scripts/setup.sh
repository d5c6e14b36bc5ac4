#!/usr/bin/env bash
# Create .venv (if needed) and install atomsplat with its test dependencies into it.
# Later runs do nothing unless pyproject.toml changed. Then: source .venv/bin/activate
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.atomsplat-installed"
wanted="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi
echo "setting up $venv (a few minutes the first time)" >&2
python3 -m venv "$venv"
export PIP_NO_CACHE_DIR=1  # the wheels are not kept twice on a small disk
"$venv/bin/python" -m pip install -qq --upgrade pip
# torch: this pair works on the development machines (x86_64, Python 3.11); elsewhere install the
# torch build that fits your machine into .venv first and set ATOMSPLAT_TORCH="" to keep it.
torch_spec="${ATOMSPLAT_TORCH-torch==2.14.1 torchvision==0.29.1}"
if [ -n "$torch_spec" ]; then
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -qq $torch_spec
fi
"$venv/bin/python" -m pip install -qq -e "$root[test]"
echo "$wanted" > "$stamp"
