"""Calibrated validation mIoU / absent-ok for a list of checkpoints (the "mIoU vs time" curve).

Usage: python training/curve.py CKPT [CKPT ...]   -> appends to training/work/curve_calibrated.tsv
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import calibrate, load_model  # noqa: E402

torch.set_num_threads(1)
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "curve_calibrated.tsv")
for ck in sys.argv[1:]:
    m, step, el = load_model(ck, "ema")
    c = calibrate(m, n=100)
    line = f"{el / 60:.1f}\t{step}\t{c['val_miou']:.4f}\t{c['val_absent_ok']:.4f}\t{os.path.basename(ck)}"
    print(line, flush=True)
    with open(out, "a") as f:
        f.write(line + "\n")
