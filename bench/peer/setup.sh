# Sourced by the peer scripts: the venv with onnxruntime, numpy and matplotlib, and a
# release build of maskd. Sets PEER_PY (the venv's python) and MASKD (the binary).
#
# The venv sees the system's site-packages, so Debian's python3-gi (GStreamer bindings,
# used by pipeline.py) stays importable. Debian's /usr/bin/python3 is preferred: a
# pyenv python on PATH has no gi.
set -euo pipefail
PEER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$PEER_DIR/../.." && pwd)"
VENV="$PEER_DIR/.venv"
BASE_PY="${PEER_BASE_PYTHON:-/usr/bin/python3}"
[ -x "$BASE_PY" ] || BASE_PY="$(command -v python3)"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import onnxruntime, numpy, matplotlib' 2>/dev/null; then
    echo "peer: creating $VENV (onnxruntime, numpy, matplotlib)" >&2
    "$BASE_PY" -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install --quiet onnxruntime numpy matplotlib
fi
PEER_PY="$VENV/bin/python"

if [ -z "${MASKD:-}" ]; then
    # A no-op when the build is fresh; waits if another build holds target/.
    (cd "$REPO" && cargo build --release --quiet)
    MASKD="$REPO/target/release/maskd"
fi
[ -x "$MASKD" ] || { echo "peer: no maskd binary at $MASKD" >&2; exit 1; }
export PEER_PY MASKD REPO PEER_DIR
