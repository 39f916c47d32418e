"""Make the bundled demo clip models/demo/clip.webm (VP8/WebM via GStreamer, Debian plugins-good).

10 s at 15 fps, 320x240: frames 0.. of vtest.avi (a HELD-OUT background, never used in
training; Debian opencv-doc, needs gstreamer1.0-libav to decode) with moving, slowly rotating
objects: a red circle, a blue square and a yellow star (the daemon's default prompts), plus an
unprompted green triangle and a red square (same colour as the red circle, different shape) as
distractors.

With --check, every frame is squashed to 224x224 and run through models/seg/seg.onnx with the
three default prompts; the per-prompt IoU against the known object masks is printed (the same
rule as training/eval.py), for squash and letterbox.

Usage: python training/make_clip.py [--check]
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_data  # noqa: E402
from concepts import COLOUR_HUE, DEMO_PROMPTS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "demo", "clip.webm")
W, H, FPS, SECONDS = 320, 240, 15, 10

# (concept colour, shape, radius px, path centre, path amplitude, path speeds, phase, rotation speed)
OBJECTS = [
    ("red", "circle", 30, (80, 90), (45, 40), (0.21, 0.33), 0.0, 0.0),
    ("blue", "square", 30, (235, 75), (50, 35), (0.17, 0.27), 1.3, 0.6),
    ("yellow", "star", 34, (170, 170), (90, 35), (0.13, 0.23), 2.1, -0.5),
    ("green", "triangle", 24, (260, 190), (30, 25), (0.31, 0.19), 0.4, 0.8),
    ("red", "square", 22, (60, 200), (30, 20), (0.25, 0.15), 2.8, 0.3),
]


def frames_bg(tmp: str, n: int) -> list[np.ndarray]:
    src = os.path.join(gen_data.OPENCV_DATA, "vtest.avi")
    subprocess.run(["gst-launch-1.0", "-q", "filesrc", f"location={src}", "!", "decodebin", "!", "videoconvert", "!",
                    "videoscale", "!", f"video/x-raw,format=RGB,width={W},height={H}", "!", "pngenc", "!",
                    "multifilesink", f"location={tmp}/bg%04d.png"], check=True)
    files = sorted(glob.glob(os.path.join(tmp, "bg*.png")))[:n]
    return [np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files]


def render(bg: np.ndarray, t: float, rng: np.random.Generator):
    img = bg.copy()
    masks = {}
    for col, shp, r, (cx0, cy0), (ax, ay), (sx, sy), ph, rot in OBJECTS:
        cx = cx0 + ax * math.sin(2 * math.pi * sx * t + ph)
        cy = cy0 + ay * math.sin(2 * math.pi * sy * t + ph * 0.7)
        al = gen_data.shape_alpha(np.random.default_rng(7), shp, cx, cy, r, rot * t, W, H)
        rgb = gen_data.hsv_to_rgb(COLOUR_HUE[col], 0.88, 0.95 if col != "blue" else 0.85)
        colf = gen_data.texture(np.random.default_rng(11), rgb, cx, cy, r, W, H)
        for k in masks:
            masks[k] = masks[k] * (1 - al)
        img = img * (1 - al[..., None]) + colf * al[..., None]
        masks[f"{col} {shp}"] = np.maximum(masks.get(f"{col} {shp}", 0), al)
    img = img + rng.normal(0, 1.5, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), masks


def to224(img: np.ndarray, mode: str) -> np.ndarray:
    if mode == "squash":
        return np.asarray(Image.fromarray(img).resize((224, 224), Image.BILINEAR))
    s = 224 / max(W, H)
    w, h = round(W * s), round(H * s)
    canvas = np.zeros((224, 224, 3), np.uint8)
    y0 = (224 - h) // 2
    canvas[y0:y0 + h, :w] = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    return canvas


def mask224(m: np.ndarray, mode: str) -> np.ndarray:
    im = Image.fromarray((m * 255).astype(np.uint8))
    if mode == "squash":
        return np.asarray(im.resize((224, 224), Image.BILINEAR)) >= 128
    s = 224 / max(W, H)
    w, h = round(W * s), round(H * s)
    out = np.zeros((224, 224), bool)
    y0 = (224 - h) // 2
    out[y0:y0 + h, :w] = np.asarray(im.resize((w, h), Image.BILINEAR)) >= 128
    return out


def check(frames, masks_all, step=5):
    import onnxruntime as ort
    import textenc
    from eval import sigmoid, upsample_bilinear

    sess = ort.InferenceSession(os.path.join(ROOT, "models", "seg", "seg.onnx"), providers=["CPUExecutionProvider"])
    text = textenc.encode(list(DEMO_PROMPTS))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    out = {}
    for mode in ("squash", "letterbox"):
        ious = {p: [] for p in DEMO_PROMPTS}
        for i in range(0, len(frames), step):
            x = ((to224(frames[i], mode) / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
            ml, pl = sess.run(None, {"image": x, "text": text})
            up = upsample_bilinear(ml, 224)
            for j, p in enumerate(DEMO_PROMPTS):
                pred = (sigmoid(up[j]) > 0.5) & (sigmoid(pl[j]) >= 0.5)
                gt = mask224(masks_all[i][p], mode)
                u = (pred | gt).sum()
                ious[p].append(float((pred & gt).sum() / u) if u else 1.0)
        out[mode] = {p: float(np.mean(v)) for p, v in ious.items()}
        print(f"clip check ({mode}, every {step}th frame): " +
              ", ".join(f"{p} IoU {v:.3f}" for p, v in out[mode].items()) +
              f"; first frame: " + ", ".join(f"{ious[p][0]:.3f}" for p in DEMO_PROMPTS))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    n = FPS * SECONDS
    tmp = tempfile.mkdtemp(prefix="maskd-clip-")
    try:
        bgs = frames_bg(tmp, n)
        rng = np.random.default_rng(3)
        frames, masks_all = [], []
        for i in range(n):
            f, m = render(bgs[i % len(bgs)], i / FPS, rng)
            frames.append(f)
            masks_all.append(m)
            Image.fromarray(f).save(os.path.join(tmp, f"f{i:04d}.png"), compress_level=1)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        subprocess.run(["gst-launch-1.0", "-q", "multifilesrc", f"location={tmp}/f%04d.png", "index=0",
                        f"caps=image/png,framerate={FPS}/1", "!", "pngdec", "!", "videoconvert", "!",
                        "video/x-raw,format=I420", "!", "vp8enc", "target-bitrate=900000", "deadline=0",
                        "cpu-used=0", "keyframe-max-dist=30", "!", "webmmux", "!", "filesink", f"location={a.out}"],
                       check=True)
        print(f"wrote {a.out}: {n} frames {W}x{H} @ {FPS} fps, {os.path.getsize(a.out) / 1e6:.2f} MB")
        if a.check:
            check(frames, masks_all)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
