#!/usr/bin/env bash
# Idempotent set-up: Debian's libfluidsynth3 when missing, a virtual environment in .venv,
# and the package with every extra (torch pinned to 2.13.0, the CPU wheel).
# `scripts/setup.sh bench` adds the peer engines of the benchmark suite (xgrammar,
# outlines-core, llguidance); the test script does, so that their grammars are tested.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p 2>/dev/null | grep -q libfluidsynth.so.3; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing libfluidsynth3 (audio rendering)" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfluidsynth3) >/dev/null \
            || echo "setup: could not install libfluidsynth3; WAV output will be skipped" >&2
    else
        echo "setup: libfluidsynth3 is missing and cannot be installed here; WAV output will be skipped" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extras="torch,jax,hf,data,audio,music,numba,dev${1:+,$1}"
stamp=".venv/.gramophone-installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing gramophone[$extras] into .venv (a few minutes the first time)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[$extras]"
    touch "$stamp"
fi
