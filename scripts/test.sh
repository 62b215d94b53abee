#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment that holds only numpy and
# the test tools, and runs the Rust core's tests and the Python suite against the installed
# wheel (not the source tree). Needs python3 (>= 3.10) and cargo on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD=build/ci
rm -rf "$BUILD/test-venv" "$BUILD/dist"
mkdir -p "$BUILD"

# Build tools live in their own environment, kept between runs.
[ -x "$BUILD/build-venv/bin/python" ] || "$PYTHON" -m venv "$BUILD/build-venv"
"$BUILD/build-venv/bin/pip" install -q -r scripts/build-requirements.txt
"$BUILD/build-venv/bin/maturin" build --release --out "$BUILD/dist" --interpreter "$PYTHON"

"$PYTHON" -m venv "$BUILD/test-venv"
"$BUILD/test-venv/bin/pip" install -q -r scripts/test-requirements.txt
"$BUILD/test-venv/bin/pip" install -q --no-deps "$BUILD"/dist/bptt-*.whl

cargo test --release
"$BUILD/build-venv/bin/ruff" check python tests examples benches scripts
# Run from tests/ so that nothing from the source tree shadows the installed package.
(cd tests && BPTT_EXPECT_INSTALLED=1 "../$BUILD/test-venv/bin/python" -m pytest -q -p no:cacheprovider .)
