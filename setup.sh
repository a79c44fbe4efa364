#!/usr/bin/env bash
# One command sets everything up: a virtual environment in .venv with the package and its test tools.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 'setuptools<81' wheel
# torch==2.13.0 is pinned: on these machines pip takes the CPU build from local disk.
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pip check
