#!/usr/bin/env bash
# Install slidepress with its test extras into ./.venv (created if missing), lint, run pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `-k dihedral`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1  # timm/diffusers otherwise retry the hub for ~45 s
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/python -m pytest "$@"
