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
import tomllib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import presence_sweep as ps  # noqa: E402  (its text encoder and upsampling, as maskd eval does)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(manifest: str):
    import onnxruntime as ort

    man = tomllib.load(open(manifest, "rb"))
    seg = man["segmenter"]
    mean = np.array(man["image"]["mean"], np.float32)
    std = np.array(man["image"]["std"], np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(os.path.join(os.path.dirname(manifest), seg["model"]), so,
                                providers=["CPUExecutionProvider"])
    ev = os.path.join(ROOT, "models", "eval")
    out = []
    for s in tomllib.load(open(os.path.join(ev, "index.toml"), "rb"))["sample"]:
        prompts = s["prompt"]
        if prompts[0].get("kind", "generated") != "generated":
            continue
        img = np.asarray(Image.open(os.path.join(ev, s["image"])).convert("RGB"), np.float32)
        x = ((img / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        ml, _ = sess.run([seg["mask_output"], seg["score_output"]],
                         {seg["image_input"]: x, seg["text_input"]: ps.textenc.encode([p["text"] for p in prompts])})
        up = ps.upsample_bilinear(ml.astype(np.float32), 224)
        gts = {j: np.asarray(Image.open(os.path.join(ev, p["mask"])).convert("L")) > 0
               for j, p in enumerate(prompts) if "mask" in p}
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
