#!/usr/bin/env bash
# Regenerate everything in models/ from scratch: text-encoder parts, data, training, export,
# evaluation set, evaluation, demo clip and the text reference file.  Not run by CI.
# Needs the environment of training/setup.sh.  On the 2-core CPU box this takes ~4.5 h
# (data ~20 min, training MINUTES + MINUTES2 (default 75 + 80), 2:4 variants ~60 min, export+eval ~15 min).
#   MINUTES=75 MINUTES2=80 training/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv-train/bin/python}
MINUTES=${MINUTES:-75}
MINUTES2=${MINUTES2:-80}
export PY
training/fetch_parts.sh                                   # models/text/*
"$PY" training/textenc.py --out tests/data/text_reference.tsv
"$PY" training/gen_data.py --split train --seed 1 --n 20000 --out training/work/data/train
"$PY" training/gen_data.py --split eval --seed 1000 --n 400 --out training/work/data/val
rm -f training/work/curve.tsv
# one thread: on a shared 2-core machine two OpenMP threads ran 5x SLOWER than one
"$PY" training/train.py --minutes "$MINUTES" --threads 1 2>&1 | tee training/work/train.log
# second stage: same weights and optimizer moments, a new cosine schedule at a lower peak
"$PY" training/train.py --minutes "$MINUTES2" --lr 6e-4 --low-frac 0.5 --threads 1 --seed 1 --ckpt-min 15 \
  --resume training/work/ckpt/last.pt --fresh-schedule --out training/work/ckpt2 2>&1 | tee training/work/train_stage2.log
"$PY" training/export.py --ckpt training/work/ckpt2/final.pt --weights model  # models/seg/*, models/default.toml
"$PY" training/gen_eval.py --n 150 --seed 2000               # models/eval/*
"$PY" training/eval.py --json training/work/eval_results.json
"$PY" training/make_clip.py --check                          # models/demo/clip.webm
# 2:4 variants (magnitude, fine-tuned, MaskLLM, MaskLLM + fine-tune), evaluated side by side
# with maskd eval; the shipped sparse model is MaskLLM + fine-tune, compressed to maskd.NmMatMul
cargo build --release
training/sparse_variants.sh
# (the skips keep layers the variant left dense out of the compression: lossless)
target/release/maskd sparsify --pattern 2:4 --skip /decoder/t1/ --skip /decoder/film --skip /decoder/qt/ \
  --skip /decoder/ph1/ models/v24_maskllm_ft/seg/seg.onnx models/seg24/seg.onnx
# models/sparse24.toml = models/v24_maskllm_ft.toml with model = "seg24/seg.onnx" and no [stages]
rm -rf models/v24_magnitude* models/v24_finetune* models/v24_maskllm*
