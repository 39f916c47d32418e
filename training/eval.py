"""Evaluate the exported model (onnxruntime) on models/eval/index.toml.

Rule (the Rust `maskd eval` implements the same):
  * image: JPEG decoded to RGB uint8 224x224, x/255, (x - mean)/std per channel, NCHW.
  * prompts: encoded with the int8 MiniLM (training/textenc.py); all prompts of a sample go
    through seg.onnx in one call (text [P,384]).
  * mask: the 56x56 mask LOGITS are upsampled to 224x224 bilinearly with half-pixel centres
    (align_corners = false; src = (dst + 0.5) * 56/224 - 0.5, clamped to [0, 55]); a pixel is
    ON iff sigmoid(upsampled logit) > mask_threshold (0.5, i.e. logit > 0).
  * presence: if sigmoid(presence logit) < score_threshold (0.5) the predicted mask is empty.
  * target: the 1-bit PNG (nonzero = ON); no `mask` key = absent concept = empty target.
  * IoU per present prompt = |pred & gt| / |pred | gt|.  mIoU = mean over present prompts.
  * absent-ok rate = fraction of absent prompts whose predicted mask covers <= 1% of the
    image (<= 501 of 50176 pixels).
Figures are reported separately for kind = "generated" and kind = "real".

Usage: python training/eval.py [--models models] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import textenc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def upsample_bilinear(x: np.ndarray, out: int) -> np.ndarray:
    """[P,h,w] -> [P,out,out], half-pixel centres, edge clamp (== torch align_corners=False)."""
    P, h, w = x.shape

    def axis(n_in):
        s = (np.arange(out) + 0.5) * (n_in / out) - 0.5
        s = np.clip(s, 0, n_in - 1)
        i0 = np.floor(s).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (s - i0).astype(np.float32)

    y0, y1, wy = axis(h)
    x0, x1, wx = axis(w)
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bot = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy)[None, :, None] + bot * wy[None, :, None]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.path.join(ROOT, "models"))
    ap.add_argument("--json", default=os.path.join(ROOT, "training", "work", "eval_results.json"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import onnxruntime as ort

    man = tomllib.load(open(os.path.join(a.models, "default.toml"), "rb"))
    seg = man["segmenter"]
    mean = np.array(man["image"]["mean"], np.float32)
    std = np.array(man["image"]["std"], np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(os.path.join(a.models, seg["model"]), so, providers=["CPUExecutionProvider"])
    mthr, sthr = float(seg["mask_threshold"]), float(seg["score_threshold"])
    ev_dir = os.path.join(a.models, "eval")
    idx = tomllib.load(open(os.path.join(ev_dir, "index.toml"), "rb"))
    res = {"generated": {"iou": [], "absent_ok": [], "canon_iou": [], "para_iou": [], "pres_ok": []},
           "real": {"iou": [], "absent_ok": [], "pres_ok": [], "per_prompt": []}}
    per_concept: dict[str, list[float]] = {}
    t_seg = []
    for s in idx["sample"]:
        img = np.asarray(Image.open(os.path.join(ev_dir, s["image"])).convert("RGB"), np.float32)
        x = ((img / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        prompts = s["prompt"]
        text = textenc.encode([p["text"] for p in prompts])
        t0 = time.perf_counter()
        ml, pl = sess.run([seg["mask_output"], seg["score_output"]], {seg["image_input"]: x, seg["text_input"]: text})
        t_seg.append(time.perf_counter() - t0)
        up = upsample_bilinear(ml.astype(np.float32), 224)
        for j, p in enumerate(prompts):
            kind = p.get("kind", "generated")
            present_pred = sigmoid(pl[j]) >= sthr
            pred = (sigmoid(up[j]) > mthr) & present_pred
            r = res[kind]
            if "mask" in p:
                gt = np.asarray(Image.open(os.path.join(ev_dir, p["mask"])).convert("L")) > 0
                union = (pred | gt).sum()
                iou = float((pred & gt).sum() / union) if union else 1.0
                r["iou"].append(iou)
                r["pres_ok"].append(bool(present_pred))
                if kind == "generated":
                    (r["canon_iou"] if p["text"] == p["concept"] else r["para_iou"]).append(iou)
                    per_concept.setdefault(p["concept"], []).append(iou)
            else:
                cov = pred.sum()
                r["absent_ok"].append(bool(cov <= 0.01 * pred.size))
                r["pres_ok"].append(not present_pred)
            if kind == "real":
                r["per_prompt"].append({"image": s["image"], "text": p["text"], "present": "mask" in p,
                                        "iou": r["iou"][-1] if "mask" in p else None,
                                        "coverage": float(pred.mean()), "presence_prob": float(sigmoid(pl[j]))})
    out = {}
    for kind, r in res.items():
        o = {"n_present": len(r["iou"]), "n_absent": len(r["absent_ok"]),
             "mIoU": float(np.mean(r["iou"])) if r["iou"] else None,
             "absent_ok_rate": float(np.mean(r["absent_ok"])) if r["absent_ok"] else None,
             "presence_acc": float(np.mean(r["pres_ok"])) if r["pres_ok"] else None}
        if kind == "generated":
            o["mIoU_canonical_prompt"] = float(np.mean(r["canon_iou"])) if r["canon_iou"] else None
            o["mIoU_paraphrase"] = float(np.mean(r["para_iou"])) if r["para_iou"] else None
            o["iou_ge_0.5_frac"] = float(np.mean(np.array(r["iou"]) >= 0.5))
        else:
            o["prompts"] = r["per_prompt"]
        out[kind] = o
    out["per_concept_mIoU"] = {k: round(float(np.mean(v)), 4) for k, v in sorted(per_concept.items())}
    out["seg_onnx_ms_per_image_ort"] = 1000 * float(np.median(t_seg))
    out["threads"] = a.threads
    g = out["generated"]
    print(f"generated: mIoU {g['mIoU']:.4f} over {g['n_present']} present prompts "
          f"(canonical {g['mIoU_canonical_prompt']:.4f}, paraphrase {g['mIoU_paraphrase']:.4f}); "
          f"absent-ok {g['absent_ok_rate']:.4f} over {g['n_absent']} absent prompts; presence acc {g['presence_acc']:.4f}")
    for p in out["real"]["prompts"]:
        print(f"real {p['image']} '{p['text']}': present={p['present']} IoU={p['iou']} "
              f"coverage={p['coverage']:.4f} presence={p['presence_prob']:.3f}")
    print(f"seg.onnx onnxruntime median {out['seg_onnx_ms_per_image_ort']:.1f} ms/call ({a.threads} thread)")
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
