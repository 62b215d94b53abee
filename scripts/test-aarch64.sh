#!/usr/bin/env bash
# Runs the Rust core's test suite for aarch64 (where NEON is part of the baseline the
# kernels compile for) under user-mode QEMU on an x86-64 Linux machine.
# Needs: rustup target add aarch64-unknown-linux-gnu, and the Debian packages
# qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test --release --target aarch64-unknown-linux-gnu "$@"
