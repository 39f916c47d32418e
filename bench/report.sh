#!/usr/bin/env bash
# Measures and rewrites docs/BENCHMARKS.md and docs/bench_threads.png.
#
#   bench/report.sh [--threads "1 2"] [--rounds 5] [--frames 20]
#                   [--pipeline-threads "1 2"] [--pipeline-rounds 3] [--pipeline-frames 200]
#                   [--note "text shown at the top of the document"]
#
# Default threads: 1 and 2, and 4, 8, 16 where the machine has that many cores.
# Set up like bench/peer/run.sh (venv, release build; MASKD=path skips the build).
# Results go to bench/results/ (model.json, pipeline-N.json), then bench/report.py
# writes the document from them alone.
set -euo pipefail
cores="$(nproc)"
threads="1 2"
for n in 4 8 16; do [ "$n" -le "$cores" ] && threads="$threads $n"; done
rounds=5 frames=20 pthreads="1 2" prounds=3 pframes=200 note=""
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --frames) frames="$2"; shift 2 ;;
        --pipeline-threads) pthreads="$2"; shift 2 ;;
        --pipeline-rounds) prounds="$2"; shift 2 ;;
        --pipeline-frames) pframes="$2"; shift 2 ;;
        --note) note="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "report.sh: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
done
source "$(dirname "${BASH_SOURCE[0]}")/peer/setup.sh"
cd "$REPO"
"$PEER_PY" "$PEER_DIR/test_common.py"
results="$REPO/bench/results"
mkdir -p "$results"
"$PEER_PY" "$PEER_DIR/compare.py" --maskd "$MASKD" --threads "$threads" --rounds "$rounds" \
    --frames "$frames" --out "$results/model.json"
rm -f "$results"/pipeline-*.json
pipeline_args=()
for n in $pthreads; do
    "$PEER_PY" "$PEER_DIR/pipeline_compare.py" --maskd "$MASKD" --threads "$n" \
        --rounds "$prounds" --frames "$pframes" --out "$results/pipeline-$n.json"
    pipeline_args+=(--pipeline "$results/pipeline-$n.json")
done
"$PEER_PY" "$REPO/bench/report.py" --model "$results/model.json" "${pipeline_args[@]}" \
    --doc "$REPO/docs/BENCHMARKS.md" --plot "$REPO/docs/bench_threads.png" --note "$note"
