#!/usr/bin/env bash
# Set up and run the test suite (the README's second quick-start command; CI runs exactly this).
#   1. a venv with every extra: ruff, the README-vs-results check, the whole suite;
#   2. a fresh venv with the runtime alone (`pip install ".[onnx]"`: no torch), running the
#      runtime tests on bundles that step 1's converters built.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP_FLAGS=(-q --disable-pip-version-check)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first (CPU build; see setup.cfg), so nothing below pulls a CUDA build.
.venv/bin/pip install "${PIP_FLAGS[@]}" torch==2.13.0
.venv/bin/pip install "${PIP_FLAGS[@]}" -e ".[all]"
bash scripts/ensure_chromium.sh >/dev/null  # the web page's test drives headless Chromium
.venv/bin/ruff check .
.venv/bin/python scripts/render_readme.py --check
echo "== step 1: full install =="
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

echo "== step 2: runtime-only install (pip install .[onnx], no torch) =="
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python scripts/build_test_bundles.py "$work/bundles"
"$PY" -m venv "$work/venv"
"$work/venv/bin/pip" install "${PIP_FLAGS[@]}" ".[onnx]" pytest
"$work/venv/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
    || { echo "the runtime-only venv has torch" >&2; exit 1; }
# From $work, so `edgeclip` is the installed package, not this checkout's sources.
(cd "$work" && EDGECLIP_TEST_BUNDLES="$work/bundles" "$work/venv/bin/python" -m pytest -q \
    -p no:cacheprovider --rootdir "$OLDPWD" "$OLDPWD/tests/test_runtime_only.py" \
    "$OLDPWD/tests/test_tokenizer.py" "$OLDPWD/tests/test_images.py" \
    "$OLDPWD/tests/test_preprocess.py" "$OLDPWD/tests/test_zoo.py" "$OLDPWD/tests/test_layers.py")
