#!/usr/bin/env bash
# The main job (the README's first quick-start command): set up .venv if missing, then train or
# reuse the procedural teacher, distil and convert the student, and evaluate the bundle offline.
# Flags go to examples/main_job.py (--steps N, --out DIR, --skip-teacher-check).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    # torch first (CPU build; see setup.cfg), so nothing below pulls a CUDA build.
    .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/pip install -q --disable-pip-version-check -e ".[all]"
fi
exec .venv/bin/python examples/main_job.py "$@"
