#!/usr/bin/env bash
# Builds the release artifacts into dist/ and checks them:
#   - one portable wheel: abi3 (one file for every CPython >= 3.10), manylinux2014 /
#     manylinux_2_17 (glibc >= 2.17), linked with zig from PyPI's `ziglang`, so no manylinux
#     docker image is needed; release profile with fat LTO, symbols stripped, baseline
#     instruction set (SIMD is chosen at run time, never target-cpu=native);
#   - the sdist;
#   - `twine check --strict` on both (metadata, README rendering), `auditwheel show` on the
#     wheel (its platform policy must be manylinux_2_17), and a smoke test of the wheel in
#     a fresh virtual environment.
# Needs python3 (>= 3.10) and cargo on PATH, and network access for the pinned tools
# (scripts/release-requirements.txt) and numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=build/release
DIST=dist
ARCH=$(uname -m)
POLICY=manylinux_2_17_$ARCH

# A host-specific instruction set would make the wheel crash on older CPUs.
if [[ "${RUSTFLAGS:-} ${CARGO_ENCODED_RUSTFLAGS:-}" == *target-* ]]; then
    echo "build-wheels.sh: RUSTFLAGS sets target-cpu/target-feature; a portable wheel" \
         "must not. Unset it and run again." >&2
    exit 1
fi

[ -x "$WORK/venv/bin/python" ] || "$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q -r scripts/release-requirements.txt
# maturin finds zig as `python -m ziglang` with the python on PATH.
export PATH="$PWD/$WORK/venv/bin:$PATH"

mkdir -p "$DIST"
rm -f "$DIST"/bptt-*
maturin build --release --strip --zig --compatibility manylinux2014 --out "$DIST"
maturin sdist --out "$DIST"
WHEEL=$(ls "$DIST"/bptt-*.whl)
SDIST=$(ls "$DIST"/bptt-*.tar.gz)

echo "== twine check --strict"
twine check --strict "$WHEEL" "$SDIST"

echo "== auditwheel show"
auditwheel show "$WHEEL" | tee "$WORK/auditwheel.txt"
tr -s ' \n' ' ' < "$WORK/auditwheel.txt" | grep -q "consistent with the following platform tag: \"$POLICY\"" \
    || { echo "build-wheels.sh: the wheel is not $POLICY" >&2; exit 1; }
case "$(basename "$WHEEL")" in
    *-abi3-*manylinux_2_17_"$ARCH".whl) ;;
    *) echo "build-wheels.sh: unexpected wheel name $(basename "$WHEEL")" >&2; exit 1 ;;
esac

echo "== sdist contents"
tar -tzf "$SDIST" > "$WORK/sdist-files.txt"
for f in pyproject.toml Cargo.toml Cargo.lock LICENSE README.md src/lib.rs python/bptt/__init__.py \
         python/bptt/_core.pyi python/bptt/py.typed; do
    grep -qx "bptt-[^/]*/$f" "$WORK/sdist-files.txt" \
        || { echo "build-wheels.sh: $f is missing from the sdist" >&2; exit 1; }
done
if grep -E '\.(so|pyd)$' "$WORK/sdist-files.txt"; then
    echo "build-wheels.sh: the sdist holds compiled files" >&2; exit 1
fi
echo "$(wc -l < "$WORK/sdist-files.txt") files, no compiled ones"

echo "== smoke test in a fresh virtual environment"
rm -rf "$WORK/smoke-venv"
"$PYTHON" -m venv "$WORK/smoke-venv"
"$WORK/smoke-venv/bin/pip" install -q "$WHEEL"
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

echo "== built"
ls -l "$WHEEL" "$SDIST"
