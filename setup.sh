#!/usr/bin/env bash
# One command sets everything up: a virtual environment in .venv with the package and its test tools.
set -euo pipefail
cd "$(dirname "$0")"
# Debian packages of the real servers and the browser the tests start: PostgreSQL (the service's
# shared job store) and Chromium (the web page).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=""
  for pkg in postgresql chromium; do dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"; done
  if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  fi
elif ! command -v chromium >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "note: the tests need Debian's postgresql and chromium packages (apt-get install postgresql chromium)" >&2
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 'setuptools<81' wheel
# torch==2.13.0 is pinned: on these machines pip takes the CPU build from local disk.
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pip check
