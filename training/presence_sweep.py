"""Compare models across presence thresholds on the held-out generated set (onnxruntime).

At one fixed presence threshold, a model with more conservative presence logits trades
mIoU for absent-ok, so `maskd eval` figures of two models at the same threshold mix mask
quality with where each model's trade-off sits. This sweeps the presence-logit threshold
and prints, per model, mIoU at the threshold the manifest ships, the mIoU with presence
ignored (every mask kept), and mIoU at the first threshold whose absent-ok reaches each
target — the models compared at equal false-alarm rates. The targets are read off the
evaluation set itself, so these are an analysis of the models, not tuned operating points.

  python training/presence_sweep.py models/default.toml models/v24_maskllm.toml
"""
from __future__ import annotations

import os
import sys
import tomllib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import textenc  # noqa: E402
from eval import ROOT, upsample_bilinear  # noqa: E402


def predictions(manifest: str, emb_cache: dict | None = None):
    """Per generated eval sample: (prompts, mask logits upsampled to 224 [P,224,224], presence
    logits [P], {prompt index: ground-truth mask}) from the manifest's segmenter, as maskd eval
    runs it."""
    import onnxruntime as ort

    emb_cache = {} if emb_cache is None else emb_cache
    man = tomllib.load(open(manifest, "rb"))
    seg = man["segmenter"]
    mean = np.array(man["image"]["mean"], np.float32)
    std = np.array(man["image"]["std"], np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    base = os.path.dirname(manifest)
    sess = ort.InferenceSession(os.path.join(base, seg["model"]), so, providers=["CPUExecutionProvider"])
    ev = os.path.join(ROOT, "models", "eval")
    for s in tomllib.load(open(os.path.join(ev, "index.toml"), "rb"))["sample"]:
        prompts = s["prompt"]
        if prompts[0].get("kind", "generated") != "generated":
            continue
        img = np.asarray(Image.open(os.path.join(ev, s["image"])).convert("RGB"), np.float32)
        x = ((img / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        if s["image"] not in emb_cache:
            emb_cache[s["image"]] = textenc.encode([p["text"] for p in prompts])
        ml, pl = sess.run([seg["mask_output"], seg["score_output"]],
                          {seg["image_input"]: x, seg["text_input"]: emb_cache[s["image"]]})
        gts = {j: np.asarray(Image.open(os.path.join(ev, p["mask"])).convert("L")) > 0
               for j, p in enumerate(prompts) if "mask" in p}
        yield prompts, upsample_bilinear(ml.astype(np.float32), 224), pl, gts


def image_scores(prompts, up, pl, gts):
    """One sample of `predictions`: (presence logit, IoU) per present prompt [n,2] and
    (presence logit, coverage) per absent one [m,2]."""
    present, absent = [], []
    for j in range(len(prompts)):
        m = up[j] > 0
        if j in gts:
            gt = gts[j]
            present.append((pl[j], (m & gt).sum() / max((m | gt).sum(), 1)))
        else:
            absent.append((pl[j], m.mean()))
    return np.array(present).reshape(-1, 2), np.array(absent).reshape(-1, 2)


def scores(manifest: str, emb_cache: dict):
    """(presence logit, IoU) per present prompt and (presence logit, coverage) per absent one."""
    rows = [image_scores(*sample) for sample in predictions(manifest, emb_cache)]
    thr = tomllib.load(open(manifest, "rb"))["segmenter"]["score_threshold"]
    return float(thr), np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def main():
    cache: dict = {}
    grid = np.linspace(-6, 6, 1201)
    for manifest in sys.argv[1:]:
        thr, P, A = scores(manifest, cache)
        miou = lambda t: float(np.mean(np.where(P[:, 0] >= t, P[:, 1], 0.0)))  # noqa: E731
        aok = lambda t: float(np.mean((A[:, 0] < t) | (A[:, 1] <= 0.01)))  # noqa: E731
        t0 = float(np.log(thr / (1 - thr)))
        print(f"{manifest}: at score_threshold {thr}: mIoU {miou(t0):.4f} absent-ok {aok(t0):.4f}; "
              f"presence ignored: mIoU {P[:, 1].mean():.4f}")
        for target in (0.70, 0.75, 0.80, 0.90):
            t = next((t for t in grid if aok(t) >= target), grid[-1])
            print(f"  absent-ok >= {target:.2f}: mIoU {miou(t):.4f} (absent-ok {aok(t):.4f}, logit threshold {t:.2f})")


if __name__ == "__main__":
    main()
