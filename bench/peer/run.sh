#!/usr/bin/env bash
# maskd (dense and 2:4) against ONNX Runtime on the same ONNX file, inputs and frames.
#
#   bench/peer/run.sh [--threads "1 2"] [--rounds 5] [--frames 20] [--out FILE.json]
#
# Creates bench/peer/.venv if missing, builds maskd release if needed (MASKD=path skips
# the build), dumps maskd's segmenter inputs once and alternates, per thread count,
# rounds of `maskd bench --json --rounds 1` (models/default.toml, models/sparse24.toml)
# with ONNX Runtime (CPUExecutionProvider, ORT_ENABLE_ALL, intra-op threads = N,
# inter-op 1, sequential). Prints each round's ratio, the medians and the outputs' max
# abs difference. Any other option goes to compare.py (--help lists them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO"
"$PEER_PY" "$PEER_DIR/test_common.py"
exec "$PEER_PY" "$PEER_DIR/compare.py" --maskd "$MASKD" "$@"
