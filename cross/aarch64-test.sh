#!/usr/bin/env bash
# Cross-builds maskd-kernels for aarch64-unknown-linux-gnu and runs its tests under
# qemu-user (Docker, and so `cross`, does not run here). Idempotent: installs only
# what is missing. Extra arguments go to `cargo test` (e.g. a test name filter).
#
#   cross/aarch64-test.sh                 # whole suite, NEON kernel included
#   cross/aarch64-test.sh neon_kernel     # just the NEON property suite
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu)
[ -d /usr/aarch64-linux-gnu/lib ] || need_apt+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need_apt+=(qemu-user-static)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET" || {
        echo "error: could not install the Rust standard library for $TARGET (rustup target add failed)." >&2
        echo "The aarch64 tests cannot run on this machine." >&2
        exit 2
    }
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# tract is only the benchmark's dense baseline: skip cross-building it for tests.
# (RUSTFLAGS with --target applies to target artifacts only, so the host build
# cache is untouched.)
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="--cfg maskd_no_tract"

exec cargo test -p maskd-kernels --target "$TARGET" "$@"
