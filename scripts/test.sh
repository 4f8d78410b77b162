#!/usr/bin/env bash
# Runs the whole test suite (set-up included). HYPOTHESIS_PROFILE=dev for longer runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh bench
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
.venv/bin/python -m ruff check gramophone tests benchmarks
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -q "$@"
