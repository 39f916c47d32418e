#!/usr/bin/env bash
# `maskd run` against bench/peer/pipeline.py (GStreamer -> numpy -> ONNX Runtime -> RLE ->
# socket) on the same frames, model and prompts, alternating, two subscribers each.
#
#   bench/peer/pipeline.sh [--threads 1] [--rounds 3] [--frames 200] [--out FILE.json]
#
# Sets up like run.sh (venv, release build; MASKD=path skips the build). Prints each
# round's frames/s, latency p50/p99 and peak RSS of both, and the medians and ratios.
# Any other option goes to pipeline_compare.py (--help lists them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO"
"$PEER_PY" "$PEER_DIR/test_common.py"
exec "$PEER_PY" "$PEER_DIR/pipeline_compare.py" --maskd "$MASKD" "$@"
