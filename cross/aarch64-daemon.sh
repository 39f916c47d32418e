#!/usr/bin/env bash
# Cross-builds the whole daemon (`maskd`: tract + GStreamer) for aarch64-unknown-linux-gnu
# against Debian's arm64 multiarch GStreamer, then runs the engine's unit tests and the
# integration tests (the real aarch64 `maskd` binary, end to end) under qemu-user.
# Idempotent: installs only what is missing. See cross/README.md.
#
#   cross/aarch64-daemon.sh              # engine unit tests + every integration test
#   cross/aarch64-daemon.sh --ci         # engine unit tests + the daemon end-to-end tests
#   cross/aarch64-daemon.sh --build      # cross-build the tests and the binary, run nothing
#   cross/aarch64-daemon.sh -- FILTER    # integration tests matching FILTER only
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
MODE=full
while [ $# -gt 0 ]; do
    case "$1" in
        --ci) MODE=ci ;;
        --build) MODE=build ;;
        --) shift; break ;;
        *) echo "usage: $0 [--ci|--build] [-- INTEGRATION_TEST_FILTER...]" >&2; exit 2 ;;
    esac
    shift
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "adding the arm64 dpkg architecture (multiarch)"
    $SUDO dpkg --add-architecture arm64
fi
APT_PACKAGES=(
    gcc-aarch64-linux-gnu               # linker, and CC for tract-linalg's NEON assembly
    libc6-dev-arm64-cross               # the C runtime the cross linker links against
    qemu-user-static                    # runs the test binaries and the spawned daemon
    libgstreamer1.0-dev:arm64           # .pc files and libraries to link against
    liborc-0.4-dev:arm64                # gstreamer-video-1.0.pc requires orc-0.4
    libgstreamer-plugins-base1.0-0:arm64  # libgstapp, libgstvideo (the -dev: below)
    gstreamer1.0-plugins-base:arm64     # videotestsrc, decodebin, videoconvert (tests)
    gstreamer1.0-plugins-good:arm64     # matroskademux + vp8dec for the demo clip (tests)
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    # --no-remove: fail rather than take out a native package that an arm64 one conflicts with.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}"
fi

if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET" || {
        echo "error: could not install the Rust standard library for $TARGET (rustup target add failed)." >&2
        exit 2
    }
fi

# Its own target directory: the shared target/ is locked for the whole of other builds'
# test runs, and the maskd-kernels script builds this target with other RUSTFLAGS.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/aarch64-daemon}"
mkdir -p "$CARGO_TARGET_DIR"
CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"

# Debian 12's libgstreamer-plugins-base1.0-dev is not Multi-Arch: same, so installing
# its arm64 build removes the amd64 one that native builds need (and the other way
# round). Its .pc files and .so links are unpacked here instead, pointing at the arm64
# runtime libraries, which do co-install.
GST_DEV="$CARGO_TARGET_DIR/arm64-gst-plugins-base-dev"
GST_VERSION="$(dpkg-query -W -f='${Version}' libgstreamer-plugins-base1.0-0:arm64)"
if [ "$(cat "$GST_DEV/version" 2>/dev/null)" != "$GST_VERSION" ]; then
    echo "unpacking libgstreamer-plugins-base1.0-dev:arm64 $GST_VERSION into $GST_DEV"
    tmp="$(mktemp -d)"
    fetch() { (cd "$tmp" && apt-get download -q "libgstreamer-plugins-base1.0-dev:arm64=$GST_VERSION"); }
    fetch || { $SUDO apt-get update -qq && fetch; }
    dpkg-deb -x "$tmp"/libgstreamer-plugins-base1.0-dev_*_arm64.deb "$tmp/x"
    rm -rf "$GST_DEV"
    mkdir -p "$GST_DEV/pkgconfig" "$GST_DEV/lib"
    for pc in "$tmp"/x/usr/lib/aarch64-linux-gnu/pkgconfig/*.pc; do
        sed "s|^libdir=.*|libdir=$GST_DEV/lib|" "$pc" >"$GST_DEV/pkgconfig/$(basename "$pc")"
    done
    for so in "$tmp"/x/usr/lib/aarch64-linux-gnu/*.so; do
        ln -s "/usr/lib/aarch64-linux-gnu/$(readlink "$so")" "$GST_DEV/lib/$(basename "$so")"
    done
    rm -rf "$tmp"
    echo "$GST_VERSION" >"$GST_DEV/version"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
# Multiarch keeps arm64 libraries and .pc files at their real paths (prefix /usr), so no
# sysroot: only the search path changes. The target-suffixed names reach the target's
# build scripts alone (pkg-config-rs, used by system-deps, reads VAR_<target> first);
# host build scripts keep the host's .pc files.
export PKG_CONFIG_ALLOW_CROSS_aarch64_unknown_linux_gnu=1
export PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=$GST_DEV/pkgconfig:/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
export PKG_CONFIG_PATH_aarch64_unknown_linux_gnu=
# No -L: the loader and every library are the multiarch ones under /lib/aarch64-linux-gnu,
# /usr/lib/aarch64-linux-gnu (mixing in the cross libc of /usr/aarch64-linux-gnu would
# pair two glibc builds).
RUNNER=qemu-aarch64-static
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$RUNNER"
# Without binfmt_misc an aarch64 executable cannot be exec'd: the integration tests
# prefix the daemon they spawn with MASKD_TEST_RUNNER (tests/integration/util.rs), and
# GStreamer loads its plugins in-process instead of forking gst-plugin-scanner.
export MASKD_TEST_RUNNER="$RUNNER"
export GST_REGISTRY_FORK=no
# A private registry, so the first run's plugin scan under qemu is not mixed with others.
export GST_REGISTRY="$CARGO_TARGET_DIR/gst-registry-$TARGET.bin"

cargo_test() {
    cargo test -p maskd --locked --target "$TARGET" "$@"
}

if [ "$MODE" = build ]; then
    cargo_test --lib --test integration --no-run
    cargo build -p maskd --locked --target "$TARGET" --bin maskd
    exit 0
fi

# The tests that run the real (bundled) models take minutes each under qemu: CI runs the
# engine tests and the daemon end to end on the fixture model; the full set runs them all
# (the bundled-model daemon test delivered 3 of its 30 frames in its 120 s under qemu).
ENGINE_SKIP=()
[ "$MODE" = ci ] && ENGINE_SKIP=(--skip default_model_ --skip real_ --skip shipped_)
SECONDS=0
echo "== aarch64: engine unit tests (qemu)"
cargo_test --lib -- engine "${ENGINE_SKIP[@]}"
echo "== aarch64: engine tests took ${SECONDS}s"

SECONDS=0
if [ "$MODE" = ci ]; then
    echo "== aarch64: daemon end-to-end tests (qemu)"
    cargo_test --test integration -- daemon:: --skip two_readers_get_their_masks
else
    echo "== aarch64: integration tests (qemu)"
    cargo_test --test integration -- "$@"
fi
echo "== aarch64: integration tests took ${SECONDS}s"
