#!/usr/bin/env bash
# The 2:4 comparison of docs/SPARSE.md: from the trained dense checkpoint make the
# magnitude, magnitude + fine-tune, MaskLLM (learned) and MaskLLM + fine-tune (learned masks
# kept, weights tuned against the dense model: the shipped one) 2:4 variants, export each beside
# the dense model as models/v24_<mode>/ + models/v24_<mode>.toml (dense layout, weights
# obeying 2:4), and evaluate all four with the Rust pipeline (`maskd eval --json`).
#   MINUTES=20 FT_MINUTES=25 SHARE=2 training/sparse_variants.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv-train/bin/python}
MINUTES=${MINUTES:-20}
# second phase on the MaskLLM checkpoint (docs/SPARSE.md section 6)
FT_MINUTES=${FT_MINUTES:-25}
# output columns per shared 2:4 pattern (1 = every column its own; 2 = pairs, which the
# AVX2 token kernel runs with one input load per two FMAs: docs/SPARSE.md section 3)
SHARE=${SHARE:-2}
CK=training/work/ckpt
DENSE=${DENSE:-training/work/ckpt2/final.pt}   # the checkpoint models/seg was exported from
MASKD=${MASKD:-target/release/maskd}
# fine-tune and MaskLLM train side by side, one thread each
"$PY" training/sparse24.py --mode finetune --ckpt "$DENSE" --minutes "$MINUTES" --share "$SHARE" --out "$CK/finetune24.pt" > training/work/finetune24.log 2>&1 &
"$PY" training/sparse24.py --mode maskllm --ckpt "$DENSE" --minutes "$MINUTES" --share "$SHARE" --out "$CK/maskllm24.pt" > training/work/maskllm24.log 2>&1 &
wait
# the MaskLLM masks stay (weights that obey 2:4 are their own magnitude mask); the teacher
# is still the dense model
"$PY" training/sparse24.py --mode finetune --ckpt "$CK/maskllm24.pt" --teacher "$DENSE" --minutes "$FT_MINUTES" \
  --share "$SHARE" --out "$CK/maskllm_ft24.pt" > training/work/maskllm_ft24.log 2>&1 &
"$PY" training/sparse24.py --mode magnitude --ckpt "$DENSE" --share "$SHARE" --out "$CK/magnitude24.pt" > training/work/magnitude24.log 2>&1
wait
# every variant at the dense model's presence threshold, so the mIoU column compares
# masks and not thresholds (each variant still gets its own bias calibration)
THR=$(sed -n 's/^score_threshold *= *\([0-9.]*\).*/\1/p' models/default.toml)
for mode in magnitude finetune maskllm maskllm_ft; do
  "$PY" training/export.py --score-threshold "$THR" --ckpt "$CK/${mode}24.pt" --out "models/v24_${mode}/seg" --manifest "v24_${mode}.toml" \
    > "training/work/export_${mode}24.log" 2>&1 &
done
wait
for pair in "default v24_magnitude" "v24_finetune v24_maskllm" "v24_maskllm_ft"; do
  for m in $pair; do
    "$MASKD" eval --manifest "models/$m.toml" --json > "training/work/eval_$m.json" &
  done
  wait
done
grep -h "val mIoU" training/work/*24.log
for m in default v24_magnitude v24_finetune v24_maskllm v24_maskllm_ft; do
  printf '%s ' "$m"; "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['miou'], d.get('absent_ok_rate'))" "training/work/eval_$m.json"
done
