#!/usr/bin/env bash
# Builds the release artifacts into dist/ and checks them.
#
#   bash scripts/build-wheels.sh [TARGET...]     (no TARGET: all of them)
#
# TARGET                 wheel platform tag        how it is built from a Linux x86-64 machine
#   linux-x86_64         manylinux_2_17_x86_64     maturin --zig (zig from PyPI's `ziglang`)
#   linux-aarch64        manylinux_2_17_aarch64    maturin --zig
#   macos-arm64          macosx_11_0_arm64         maturin --zig (zig ships the macOS libc stubs)
#   macos-x86_64         macosx_10_12_x86_64       maturin --zig
#   windows-x86_64       win_amd64                 Rust's x86_64-pc-windows-gnu target linked by
#                                                  Debian's MinGW-w64 (see below)
#   sdist                the source distribution
#
# Every wheel is abi3 (one file for every CPython >= 3.10), release profile with fat LTO,
# symbols stripped, baseline instruction set of its target (SIMD is chosen at run time,
# never target-cpu=native). Checks: `twine check --strict` (metadata, README rendering);
# scripts/check_wheel.py on every wheel (tags, the one compiled file, its format and
# machine; for macOS the minimum OS version, linked libraries and that every other symbol
# is Python's; for Windows that it imports only system DLLs and python3.dll);
# `auditwheel show` on the Linux wheels (the policy must be manylinux_2_17); a smoke test
# of the wheel that runs here in a fresh virtual environment. The aarch64 wheel's test
# run under QEMU is scripts/test-aarch64-wheel.sh.
#
# Windows: the MSVC target needs Microsoft's C runtime and SDK libraries (cargo-xwin
# downloads them from Microsoft), which a machine that reaches only package registries
# cannot fetch; the GNU target links against msvcrt.dll, which every Windows has, through
# MinGW-w64 from Debian; PyO3 declares python3.dll's functions as `raw-dylib` imports
# (written by MinGW's dlltool), so the module needs no Windows Python to build. Its wheel tag is the same
# win_amd64, and the module only talks to the interpreter through the stable ABI.
#
# Needs python3 (>= 3.10), cargo and rustup on PATH; network access for the Rust targets
# (added with rustup when missing), the pinned tools (scripts/release-requirements.txt)
# and numpy; llvm-readobj/llvm-objdump (Debian: llvm); for windows-x86_64 the Debian
# packages gcc-mingw-w64-x86-64 and binutils-mingw-w64-x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=build/release
DIST=dist
ALL=(linux-x86_64 linux-aarch64 macos-arm64 macos-x86_64 windows-x86_64 sdist)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

# A host-specific instruction set would make the wheel crash on older CPUs.
if [[ "${RUSTFLAGS:-} ${CARGO_ENCODED_RUSTFLAGS:-}" == *target-* ]]; then
    echo "build-wheels.sh: RUSTFLAGS sets target-cpu/target-feature; a portable wheel" \
         "must not. Unset it and run again." >&2
    exit 1
fi

triple() {
    case "$1" in
        linux-x86_64) echo x86_64-unknown-linux-gnu ;;
        linux-aarch64) echo aarch64-unknown-linux-gnu ;;
        macos-arm64) echo aarch64-apple-darwin ;;
        macos-x86_64) echo x86_64-apple-darwin ;;
        windows-x86_64) echo x86_64-pc-windows-gnu ;;
        sdist) echo none ;;
        *) echo "build-wheels.sh: unknown target $1 (one of: ${ALL[*]})" >&2; return 1 ;;
    esac
}
for t in "${TARGETS[@]}"; do triple "$t" > /dev/null; done

[ -x "$WORK/venv/bin/python" ] || "$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q -r scripts/release-requirements.txt
# maturin finds zig as `python -m ziglang` with the python on PATH.
export PATH="$PWD/$WORK/venv/bin:$PATH"
mkdir -p "$DIST"

smoke_test() {
    rm -rf "$WORK/smoke-venv"
    "$PYTHON" -m venv "$WORK/smoke-venv"
    "$WORK/smoke-venv/bin/pip" install -q "$1"
    (cd "$WORK" && smoke-venv/bin/python - <<'PY'
import bptt
import numpy as np

m = bptt.LSTM(3, 8, num_layers=2, bidirectional=True, seed=0)
x = np.random.default_rng(0).standard_normal((20, 4, 3)).astype(np.float32)
out, state, tape = m.forward(x)
g = m.backward(tape, np.ones_like(out))
assert g.dx.shape == x.shape and np.isfinite(g.dh_norm).all()
assert "site-packages" in bptt.__file__, bptt.__file__
print("bptt", bptt.__version__, "from", bptt.__file__, bptt.build_info())
PY
    )
}

build_sdist() {
    rm -f "$DIST"/bptt-*.tar.gz
    maturin sdist --out "$DIST"
    local sdist
    sdist=$(ls "$DIST"/bptt-*.tar.gz)
    twine check --strict "$sdist"
    echo "== sdist contents"
    tar -tzf "$sdist" > "$WORK/sdist-files.txt"
    for f in pyproject.toml Cargo.toml Cargo.lock LICENSE README.md src/lib.rs \
             python/bptt/__init__.py python/bptt/_core.pyi python/bptt/py.typed; do
        grep -qx "bptt-[^/]*/$f" "$WORK/sdist-files.txt" \
            || { echo "build-wheels.sh: $f is missing from the sdist" >&2; exit 1; }
    done
    if grep -E '\.(so|pyd)$' "$WORK/sdist-files.txt"; then
        echo "build-wheels.sh: the sdist holds compiled files" >&2; exit 1
    fi
    echo "$(wc -l < "$WORK/sdist-files.txt") files, no compiled ones"
}

build_wheel() {
    local target=$1 rust pattern args wheel
    rust=$(triple "$target")
    rustup target list --installed | grep -qx "$rust" || rustup target add "$rust"
    case "$target" in
        linux-*) pattern="*manylinux_2_17_${target#linux-}.whl"
                 args=(--zig --compatibility manylinux2014) ;;
        macos-arm64) pattern="*macosx_11_0_arm64.whl"; args=(--zig) ;;
        macos-x86_64) pattern="*macosx_10_12_x86_64.whl"; args=(--zig) ;;
        windows-x86_64)
            pattern="*win_amd64.whl"; args=()
            for exe in x86_64-w64-mingw32-gcc x86_64-w64-mingw32-dlltool; do
                command -v "$exe" > /dev/null || {
                    echo "build-wheels.sh: $exe not found; install the Debian packages" \
                         "gcc-mingw-w64-x86-64 binutils-mingw-w64-x86-64" >&2
                    exit 1
                }
            done
            # Link libgcc and winpthreads into the module, so that it needs no MinGW DLL.
            export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUSTFLAGS="-C link-arg=-static"
            ;;
    esac
    echo "== $target ($rust)"
    rm -f "$DIST"/bptt-*$pattern
    maturin build --release --strip --target "$rust" "${args[@]}" --out "$DIST"
    wheel=$(ls "$DIST"/bptt-*$pattern)
    twine check --strict "$wheel"
    python scripts/check_wheel.py "$target" "$wheel"
    if [[ $target == linux-* ]]; then
        echo "== auditwheel show"
        auditwheel show "$wheel" | tee "$WORK/auditwheel-$target.txt"
        tr -s ' \n' ' ' < "$WORK/auditwheel-$target.txt" \
            | grep -q "consistent with the following platform tag: \"manylinux_2_17_${target#linux-}\"" \
            || { echo "build-wheels.sh: $wheel is not manylinux_2_17" >&2; exit 1; }
    fi
    if [ "$target" = "linux-$(uname -m)" ] && [ "$(uname -s)" = Linux ]; then
        echo "== smoke test in a fresh virtual environment"
        smoke_test "$wheel"
    fi
}

for t in "${TARGETS[@]}"; do
    if [ "$t" = sdist ]; then build_sdist; else build_wheel "$t"; fi
done

echo "== built"
ls -l "$DIST"/bptt-*
