"""Where the dense model's masks fail, by object size (onnxruntime, held-out generated set).

Per present prompt, with presence ignored: IoU, predicted / target area, and the share of the
predicted pixels that lie on the scene's OTHER prompted objects (the confusion PLATFORM.md's
trial saw: a mask spilling onto another object, often of the same colour). Printed per
target-area bin, because at patch 16 an object under ~1 % of the image spans at most ~1.5
patches, too few to see its shape.

  python training/error_by_size.py [models/default.toml]
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from presence_sweep import ROOT, predictions  # noqa: E402


def rows(manifest: str):
    """Per present prompt: (target area share, IoU, predicted/target area, share of the
    prediction on the other prompted objects)."""
    out = []
    for _, up, _, gts in predictions(manifest):
        for j, gt in gts.items():
            m = up[j] > 0
            others = np.zeros_like(gt)
            for k, g in gts.items():
                if k != j:
                    others |= g
            out.append((gt.mean(), (m & gt).sum() / max((m | gt).sum(), 1), m.sum() / max(gt.sum(), 1),
                        (m & others).sum() / max(m.sum(), 1)))
    return np.array(out)


def main():
    R = rows(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "default.toml"))
    print(f"{len(R)} present prompts, mean IoU with presence ignored {R[:, 1].mean():.3f}")
    for lo, hi in [(0, 0.01), (0.01, 0.02), (0.02, 0.04), (0.04, 0.08), (0.08, 1)]:
        sel = (R[:, 0] >= lo) & (R[:, 0] < hi)
        if sel.any():
            print(f"target {lo * 100:.0f}-{hi * 100:.0f} % of the image: n {sel.sum():3d}, IoU {R[sel, 1].mean():.3f}, "
                  f"predicted/target area {np.median(R[sel, 2]):.2f}, share of the prediction on other "
                  f"prompted objects {R[sel, 3].mean():.3f}")
    bad = R[:, 1] < 0.5
    print(f"IoU < 0.5: {bad.sum()}; {R[bad, 3].mean():.2f} of their predicted pixels on other prompted objects, "
          f"predicted/target area {np.median(R[bad, 2]):.2f} (median)")


if __name__ == "__main__":
    main()
