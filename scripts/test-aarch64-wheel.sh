#!/usr/bin/env bash
# Installs the manylinux aarch64 wheel into an aarch64 Python run by user-mode QEMU on an
# x86-64 Linux machine, and runs a subset of the test suite with it: the comparison with
# the plain-NumPy reference, the finite-difference gradient checks, the results'
# independence of thread count and SIMD level, and the error messages.
#
#   bash scripts/test-aarch64-wheel.sh [WHEEL] [PYTEST ARGS...]
#
# WHEEL defaults to dist/bptt-*manylinux_2_17_aarch64.whl (built by
# `bash scripts/build-wheels.sh linux-aarch64`). The aarch64 Python is Debian's (python3,
# python3-numpy, python3-pytest of the host's Debian release), unpacked without running
# anything by `mmdebstrap --variant=extract` into build/arm64-root (kept between runs; set
# ARM64_ROOT to use another). The wheel is installed by the host's pip into a folder of
# its own (`--platform manylinux2014_aarch64`, so pip checks the tag) and the tests import
# bptt from there, not from the source tree.
#
# Needs qemu-aarch64 (Debian: qemu-user) and, the first time, mmdebstrap; skips with a
# message (exit 0) when qemu-aarch64 is missing, so CI can call it everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ARM64_ROOT:-$PWD/build/arm64-root}
WORK=build/aarch64-wheel-test
PYTHON=${PYTHON:-python3}

if ! command -v qemu-aarch64 > /dev/null; then
    echo "test-aarch64-wheel.sh: SKIPPED: qemu-aarch64 not found (Debian: apt-get install" \
         "qemu-user); the aarch64 wheel was not tested"
    exit 0
fi

WHEEL=${1:-}
[ $# -eq 0 ] || shift
if [ -z "$WHEEL" ]; then
    WHEEL=$(ls dist/bptt-*manylinux_2_17_aarch64.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$WHEEL" ]; then
        echo "test-aarch64-wheel.sh: no aarch64 wheel in dist/; build it with" \
             "'bash scripts/build-wheels.sh linux-aarch64'" >&2
        exit 1
    fi
fi

if [ ! -x "$ROOT/usr/bin/python3" ]; then
    command -v mmdebstrap > /dev/null || {
        echo "test-aarch64-wheel.sh: mmdebstrap not found (Debian: apt-get install" \
             "mmdebstrap); it unpacks the aarch64 Python into $ROOT" >&2
        exit 1
    }
    SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    echo "== unpacking Debian $SUITE arm64 python3, numpy and pytest into $ROOT"
    rm -rf "$ROOT.tmp"
    mmdebstrap --quiet --variant=extract --architectures=arm64 \
        --include=python3,python3-numpy,python3-pytest "$SUITE" "$ROOT.tmp"
    mv "$ROOT.tmp" "$ROOT"
fi

# The extract variant runs no maintainer scripts, so the BLAS/LAPACK alternatives NumPy
# loads are not linked into the library path: name their folders.
LIBS=$ROOT/usr/lib/aarch64-linux-gnu
run() {
    QEMU_SET_ENV="LD_LIBRARY_PATH=$LIBS/blas:$LIBS/lapack" \
        qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3" "$@"
}
echo "== $(run -c 'import platform, sys, numpy; print(platform.machine(), "Python",
    sys.version.split()[0], "NumPy", numpy.__version__)') under $(qemu-aarch64 --version | head -n 1)"

echo "== installing $(basename "$WHEEL")"
rm -rf "$WORK"
mkdir -p "$WORK"
"$PYTHON" -m pip install -q --root-user-action=ignore --no-deps --only-binary=:all: --platform manylinux2014_aarch64 \
    --python-version 3.11 --implementation cp --target "$WORK/site" "$WHEEL"
# The tests run from a copy, with no pyproject.toml above them (its pytest options name
# plugins the aarch64 Python lacks).
mkdir "$WORK/tests"
cp tests/conftest.py tests/reference.py tests/test_against_reference.py \
    tests/test_gradcheck.py tests/test_threads.py tests/test_engine.py tests/test_errors.py \
    "$WORK/tests/"
printf '[pytest]\naddopts = -p no:cacheprovider\n' > "$WORK/tests/pytest.ini"

echo "== pytest under QEMU (slow: every instruction is emulated)"
cd "$WORK/tests"
PYTHONPATH=$PWD/../site run - "$@" <<'PY'
import sys

import bptt
import pytest

info = bptt.build_info()
print("bptt", bptt.__version__, "from", bptt.__file__, info)
assert "/site/bptt/" in bptt.__file__, bptt.__file__
assert info["target"] == "aarch64-linux", info
# This test re-runs sys.executable in a child process under an address-space limit: under
# user-mode QEMU the child cannot start without a binfmt handler for aarch64, and the limit would
# count QEMU's own reservation, so it says nothing about the wheel there.
skip = "test_errors.py::test_parameter_allocation_failure_names_the_parameter"
sys.exit(pytest.main(["-q", "--deselect", skip, *sys.argv[1:]]))
PY
