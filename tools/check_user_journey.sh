#!/usr/bin/env bash
# The Cython user journey of the documentation (docs/cython.md, "From an empty
# folder to a compiled node"), from a fresh virtual environment that holds only
# an installed pyreflux wheel (no checkout on sys.path, no build tools until the
# page says to install them):
#
#   tools/check_user_journey.sh WHEEL [PYTHON]
#
#   1. python -m venv; pip install WHEEL (and its dependencies from PyPI)
#   2. reflux and reflux_core import from site-packages, from an empty folder
#   3. the example's files (examples/cython_transformer: the page includes
#      each of them) are copied to a folder of their own, as a reader would save them
#   4. a build with build isolation stops with the example's clear message
#      (an isolated environment has no reflux_core to build against)
#   5. the page's commands: pip install Cython "setuptools>=70.1", then
#      pip install --no-build-isolation ., then python run_example.py and
#      python record_edges.py (which checks its own results)
#
# Exit status 0 only if every step passed.
set -euo pipefail

WHEEL="${1:?usage: tools/check_user_journey.sh WHEEL [PYTHON]}"
PYTHON="${2:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXAMPLE="$ROOT/examples/cython_transformer"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/reflux-journey.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH REFLUX_DEBUG REFLUX_SANITIZE REFLUX_PARK REFLUX_BARRIER VIRTUAL_ENV

step() { printf '\n-- journey: %s\n' "$*"; }

step "1. a fresh venv with only the wheel: $(basename "$WHEEL")"
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "$WHEEL"
"$PY" -m pip list --format=freeze | tr '\n' ' '
echo

step "2. the installed package imports from an empty folder"
mkdir -p "$WORK/empty"
(cd "$WORK/empty" && "$PY" -c '
import os, sys, reflux, reflux_core.channel
for mod in (reflux, reflux_core.channel):
    assert "site-packages" in mod.__file__, mod.__file__
print("reflux", reflux.__version__, "from", os.path.dirname(reflux.__file__))
')

step "3. the example's files, as the page shows them, in a folder of their own"
APP="$WORK/hotpath"
mkdir -p "$APP"
for f in hotpath.pyx setup.py pyproject.toml run_example.py record_edges.py; do
    cp "$EXAMPLE/$f" "$APP/$f"
done
ls "$APP"

step "4. with build isolation the build stops and says why"
if (cd "$APP" && "$PY" -m pip install --quiet . >"$WORK/isolated.log" 2>&1); then
    echo "an isolated build succeeded: it cannot have used the installed reflux_core"; exit 1
fi
grep -q "pip install --no-build-isolation" "$WORK/isolated.log" || { tail -20 "$WORK/isolated.log"; exit 1; }
grep -o "hotpath is built against the installed reflux_core.*" "$WORK/isolated.log" | head -1

step "5. the page's commands"
(
    cd "$APP"
    "$PY" -m pip install --quiet Cython "setuptools>=70.1"
    "$PY" -m pip install --quiet --no-build-isolation .
    "$PY" run_example.py
    "$PY" record_edges.py
)
echo "check_user_journey: all steps passed"
