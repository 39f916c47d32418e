#!/usr/bin/env bash
# Reproduce the training environment on a fresh Debian 12 machine (not run by CI).
#   Debian packages: opencv-doc (background photos + vtest.avi/tree.avi), python3-skimage (photos),
#   GStreamer (frame extraction, demo clip encoding: vp8enc/webmmux from plugins-good, AVI/DivX
#   decoding from gstreamer1.0-libav).
#   Python venv (default /work/venv-train): PyPI packages torch numpy pillow onnx onnxruntime
#   tokenizers scipy, and transformers (only for the int8-vs-float text-encoder check).
# Note: PyPI torch pulls ~2.8 GB of CUDA wheels even for CPU-only use; it trains on CPU fine.
set -euo pipefail
VENV=${VENV:-/work/venv-train}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends \
    python3 python3-venv python3-pip \
    opencv-doc python3-skimage \
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-libav
python3 -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
# versions used for the shipped model (newer ones should work):
"$VENV/bin/pip" install torch==2.15.0 numpy==2.4.6 pillow==13.0.0 onnx==1.23.2 onnxruntime==1.32.0 \
    tokenizers==0.23.3 scipy==1.17.1 transformers==5.24.0
"$VENV/bin/python" -c "import torch, onnx, onnxruntime, tokenizers; print('torch', torch.__version__, 'onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__)"
