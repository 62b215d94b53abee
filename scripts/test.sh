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

# Build tools (maturin, ruff, mypy) live in their own environment, kept between runs, made
# again when $PYTHON is another version (stubtest below mixes the two environments).
version() { "$1" -c 'import sys; print(sys.version_info[:2])'; }
if [ ! -x "$BUILD/build-venv/bin/python" ] \
    || [ "$(version "$BUILD/build-venv/bin/python")" != "$(version "$PYTHON")" ]; then
    rm -rf "$BUILD/build-venv"
    "$PYTHON" -m venv "$BUILD/build-venv"
fi
"$BUILD/build-venv/bin/pip" install -q -r scripts/build-requirements.txt
"$BUILD/build-venv/bin/maturin" build --release --out "$BUILD/dist" --interpreter "$PYTHON"

"$PYTHON" -m venv "$BUILD/test-venv"
"$BUILD/test-venv/bin/pip" install -q -r scripts/test-requirements.txt
"$BUILD/test-venv/bin/pip" install -q --no-deps "$BUILD"/dist/bptt-*.whl

cargo test --release
"$BUILD/build-venv/bin/ruff" check python tests examples benches scripts

# The Rust house rules: formatting, clippy (warnings are errors, with the bindings), and
# the layout checks (README's Rust version, lib.rs's module list, file sizes).
for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" \
        || rustup component add "$component"
done
cargo fmt --check
PYO3_PYTHON="$PWD/$BUILD/build-venv/bin/python" cargo clippy --all-targets --features python -- -D warnings
"$BUILD/build-venv/bin/python" scripts/check_layout.py

# Types, against the installed wheel: the stub _core.pyi must match the compiled module
# (stubtest imports it, so it runs with the test environment's packages on its path), and
# a typed usage example and the installed package itself must be clean under mypy --strict.
SITE=$("$BUILD/test-venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
(cd "$BUILD" && PYTHONPATH="$SITE" build-venv/bin/python -m mypy.stubtest bptt._core)
"$BUILD/build-venv/bin/mypy" --strict --cache-dir "$BUILD/mypy-cache" \
    --python-executable "$BUILD/test-venv/bin/python" examples/typed_usage.py
(cd "$BUILD" && build-venv/bin/mypy --strict --cache-dir mypy-cache \
    --config-file ../../pyproject.toml --python-executable test-venv/bin/python -p bptt)

# Run from tests/ so that nothing from the source tree shadows the installed package.
(cd tests && BPTT_EXPECT_INSTALLED=1 "../$BUILD/test-venv/bin/python" -m pytest -q -p no:cacheprovider .)
