#!/bin/sh
# Checks systemd/maskd.service (with and without its drop-ins) and
# systemd/maskd.socket offline.
#
# `systemd-analyze verify` exits 0 even on typos and unknown keys (it only
# warns on stderr), so any output at all is a failure here. The unit's
# ExecStart binary is not installed on a build machine; a copy with ExecStart
# pointed at /bin/true is verified instead.
#
# Usage: systemd/verify.sh            (exit 0 and no output when clean)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
max_exposure=${MASKD_MAX_EXPOSURE:-25}   # systemd-analyze security x10; 1.8 today
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

sed 's|^ExecStart=/usr/local/bin/maskd |ExecStart=/bin/true |' \
    "$here/maskd.service" >"$tmp/maskd.service"
if ! grep -q '^ExecStart=/bin/true ' "$tmp/maskd.service"; then
    echo "verify.sh: no 'ExecStart=/usr/local/bin/maskd ...' line in maskd.service" >&2
    exit 1
fi
fail=0
check() {
    # $1: label; rest: command. Fails on non-zero exit or any output.
    label=$1
    shift
    if ! out=$("$@" 2>&1) || [ -n "$out" ]; then
        echo "verify.sh: $label:" >&2
        printf '%s\n' "$out" >&2
        fail=1
    fi
}

# The unit alone, then with the drop-ins (systemd-analyze reads the
# maskd.service.d/ directory beside the unit file).
check "maskd.service" systemd-analyze verify --man=no "$tmp/maskd.service"
# The socket unit beside the service it activates (Service=maskd.service is
# looked up in the same directory).
cp "$here/maskd.socket" "$tmp/maskd.socket"
check "maskd.socket" systemd-analyze verify --man=no "$tmp/maskd.socket"
if ! grep -q '^ListenSequentialPacket=/run/maskd/maskd.sock$' "$tmp/maskd.socket"; then
    echo "verify.sh: maskd.socket must listen with ListenSequentialPacket= on /run/maskd/maskd.sock" >&2
    fail=1
fi
mkdir "$tmp/maskd.service.d"
cp "$here"/maskd.service.d/*.conf "$tmp/maskd.service.d/"
check "maskd.service + drop-ins" systemd-analyze verify --man=no "$tmp/maskd.service"

# Exposure score of the unit as shipped (without the Jetson drop-in, which
# must open /tmp); the full table is printed only on failure.
rm -r "$tmp/maskd.service.d"
if ! out=$(systemd-analyze security --offline=yes --threshold="$max_exposure" \
    "$tmp/maskd.service" 2>&1); then
    echo "verify.sh: systemd-analyze security: exposure above $max_exposure/100:" >&2
    printf '%s\n' "$out" >&2
    fail=1
fi
exit $fail
