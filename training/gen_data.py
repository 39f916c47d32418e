"""Synthetic scene generator for the maskd text-prompted segmenter (numpy + Pillow only).

Scenes: 224x224 crops of real photographs (Debian opencv-doc samples + frames of
vtest.avi / tree.avi, Debian python3-skimage bundled photos) with 2-6 pasted,
textured, shaded, rotated, partly occluded coloured shapes (48 concepts =
8 shapes x 6 colours).  Scenes deliberately often hold several objects of the
SAME colour with different shapes, or the same shape in different colours.

Deterministic: scene i of a given seed always uses np.random.default_rng([seed, i]).

Training cache (training/work/data/<name>/):
  images.npy uint8 [N,224,224,3], cids.npy int16 [N,6] (-1 = unused slot),
  m56.npy uint8 [N,6,56,56] (soft target = visible area fraction * 255).

Usage:
  python training/gen_data.py --split train --seed 1 --n 24000 --out training/work/data/train
  python training/gen_data.py --split eval  --seed 1000 --n 300 --out training/work/data/val
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import math
import os
import sys
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from concepts import COLOUR_HUE, CONCEPTS, NUM_CONCEPTS, SHAPE_NAMES, COLOUR_NAMES, concept_index  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "training", "work")
S = 224
MAXK = 6  # max distinct concepts per scene

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
SKIMAGE_DATA = "/usr/lib/python3/dist-packages/skimage/data"
# synthetic / tiny / text / calibration-pattern / coloured-shape images are not used as backgrounds
EXCLUDE = {
    "block.png", "checker_bilevel.png", "chessboard_GRAY.png", "chessboard_RGB.png", "foo3x5x4indexed.png",
    "green_palette.png", "palette_color.png", "palette_gray.png", "logo.png", "microaneurysms.png", "page.png",
    "text.png", "bw_text.png", "phantom.png", "color.png", "truncated.jpg", "LinuxLogo.jpg", "WindowsLogo.jpg",
    "aloeGT.png", "cards.png", "chessboard.png", "detect_blob.png", "digits.png", "ellipses.jpg", "gradient.png",
    "imageTextN.png", "imageTextR.png", "mask.png", "ml.png", "notes.png", "opencv-logo-white.png",
    "opencv-logo.png", "sudoku.png", "templ.png", "tmpl.png", "smarties.png", "pic1.png", "pic2.png", "pic3.png",
    "pic4.png", "pic5.png", "pic6.png", "HappyFish.jpg", "box.png", "text_defocus.jpg", "text_motion.jpg",
    "licenseplate_motion.jpg", "board.jpg", "horse.png", "coins.png", "clock_motion.png", "cell.png",
}


def background_files(split: str) -> list[str]:
    """Background photos. Held-out ('eval') = every 5th still photo (sorted by name) + all vtest.avi frames.

    Frames of vtest.avi / tree.avi are extracted to training/work/frames/{vtest,tree}/ by
    `extract_frames()` (GStreamer, needs Debian gstreamer1.0-libav)."""
    stills = []
    for d in (OPENCV_DATA, SKIMAGE_DATA):
        for f in sorted(glob.glob(os.path.join(d, "*.jpg")) + glob.glob(os.path.join(d, "*.png"))):
            if os.path.basename(f) not in EXCLUDE:
                stills.append(f)
    stills.sort(key=lambda p: os.path.basename(p))
    held = [f for i, f in enumerate(stills) if i % 5 == 2]
    train = [f for i, f in enumerate(stills) if i % 5 != 2]
    vt = sorted(glob.glob(os.path.join(WORK, "frames", "vtest", "*.jpg")))
    tr = sorted(glob.glob(os.path.join(WORK, "frames", "tree", "*.jpg")))[::4]
    if split == "train":
        return train + tr
    return held + vt


def extract_frames():
    import subprocess

    for name in ("vtest", "tree"):
        d = os.path.join(WORK, "frames", name)
        if len(glob.glob(os.path.join(d, "*.jpg"))) > 5:
            continue
        os.makedirs(d, exist_ok=True)
        subprocess.run(
            ["gst-launch-1.0", "-q", "filesrc", f"location={OPENCV_DATA}/{name}.avi", "!", "decodebin", "!",
             "videoconvert", "!", "videorate", "!", "video/x-raw,framerate=2/1", "!", "jpegenc", "quality=95", "!",
             "multifilesink", f"location={d}/%04d.jpg"], check=True)


_BG_CACHE: dict[str, np.ndarray] = {}


def load_bg(path: str) -> np.ndarray:
    im = _BG_CACHE.get(path)
    if im is None:
        pil = Image.open(path)
        if pil.mode in ("RGBA", "LA", "P"):
            pil = pil.convert("RGBA")
            bg = Image.new("RGBA", pil.size, (128, 128, 128, 255))
            pil = Image.alpha_composite(bg, pil)
        pil = pil.convert("RGB")
        w, h = pil.size
        if min(w, h) < S:
            f = S / min(w, h)
            pil = pil.resize((max(S, round(w * f)), max(S, round(h * f))), Image.BICUBIC)
        im = np.asarray(pil, dtype=np.uint8)
        _BG_CACHE[path] = im
    return im


def background(rng: np.random.Generator, files: list[str], out_w: int = S, out_h: int = S) -> np.ndarray:
    im = load_bg(files[rng.integers(len(files))])
    h, w = im.shape[:2]
    aspect = out_w / out_h
    ch = int(rng.uniform(0.45, 1.0) * min(h, w / aspect))
    ch = max(ch, min(h, int(w / aspect), 96))
    cw = int(ch * aspect)
    y0 = rng.integers(0, h - ch + 1)
    x0 = rng.integers(0, w - cw + 1)
    crop = Image.fromarray(im[y0:y0 + ch, x0:x0 + cw]).resize((out_w, out_h), Image.BILINEAR)
    a = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        a = a[:, ::-1]
    # mild photometric jitter
    a = a * rng.uniform(0.75, 1.15) + rng.uniform(-20, 20)
    if rng.random() < 0.2:  # desaturate sometimes
        g = a.mean(2, keepdims=True)
        a = g + (a - g) * rng.uniform(0.0, 0.7)
    return np.clip(a, 0, 255)


# ---------------------------------------------------------------- shapes
def _poly(cx, cy, pts, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def shape_alpha(rng: np.random.Generator, shape: str, cx: float, cy: float, r: float, rot: float,
                w: int = S, h: int = S, ss: int = 3) -> np.ndarray:
    """Anti-aliased alpha [h,w] float32 in [0,1] for one shape of 'radius' r centred at (cx,cy)."""
    R = r * 1.25 + 2
    bx0, by0 = max(0, int(math.floor(cx - R))), max(0, int(math.floor(cy - R)))
    bx1, by1 = min(w, int(math.ceil(cx + R))), min(h, int(math.ceil(cy + R)))
    full = np.zeros((h, w), np.float32)
    if bx1 <= bx0 or by1 <= by0:
        return full
    lw, lh = bx1 - bx0, by1 - by0
    img = Image.new("L", (lw * ss, lh * ss), 0)
    d = ImageDraw.Draw(img)
    cx, cy, r = (cx - bx0) * ss, (cy - by0) * ss, r * ss
    asp = rng.uniform(0.88, 1.12)
    if shape == "circle":
        pts = [(r * asp * math.cos(t), r / asp * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
        d.polygon(_poly(cx, cy, pts, rot), fill=255)
    elif shape == "ring":
        inner = rng.uniform(0.45, 0.65)
        pts = [(r * asp * math.cos(t), r / asp * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
        d.polygon(_poly(cx, cy, pts, rot), fill=255)
        pts = [(inner * r * asp * math.cos(t), inner * r / asp * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
        d.polygon(_poly(cx, cy, pts, rot), fill=0)
    elif shape == "square":
        a = r * 0.85
        pts = [(-a * asp, -a / asp), (a * asp, -a / asp), (a * asp, a / asp), (-a * asp, a / asp)]
        d.polygon(_poly(cx, cy, pts, rot), fill=255)
    elif shape == "triangle":
        pts = [(r * math.cos(t + rng.uniform(-0.12, 0.12)), r * math.sin(t + rng.uniform(-0.12, 0.12)))
               for t in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)]
        pts = [(x, y + r * 0.2) for x, y in pts]
        d.polygon(_poly(cx, cy, pts, rot), fill=255)
    elif shape == "star":
        inner = rng.uniform(0.38, 0.5)
        pts = []
        for k in range(10):
            t = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * inner
            pts.append((rr * math.cos(t), rr * math.sin(t)))
        d.polygon(_poly(cx, cy, pts, rot), fill=255)
    elif shape == "cross":
        a = rng.uniform(0.28, 0.38) * r
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
        d.polygon(_poly(cx, cy, pts, rot), fill=255)
    elif shape == "heart":
        pts = []
        for t in np.linspace(0, 2 * math.pi, 80, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 16.5 * r, (y + 2.5) / 16.5 * r))
        d.polygon(_poly(cx, cy, pts, rot), fill=255)
    elif shape == "hexagon":
        pts = [(r * asp * math.cos(t), r / asp * math.sin(t)) for t in np.arange(6) * math.pi / 3]
        d.polygon(_poly(cx, cy, pts, rot), fill=255)
    else:
        raise ValueError(shape)
    img = img.resize((lw, lh), Image.BOX)
    full[by0:by1, bx0:bx1] = np.asarray(img, dtype=np.float32) / 255.0
    return full


def hsv_to_rgb(hdeg: float, s: float, v: float) -> np.ndarray:
    h = (hdeg % 360) / 60.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32) * 255.0


def object_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    hue = COLOUR_HUE[colour] + float(np.clip(rng.normal(0, 4.0), -9, 9))
    sat = rng.uniform(0.65, 1.0)
    vmin = {"yellow": 0.8, "orange": 0.8, "blue": 0.55, "purple": 0.6}.get(colour, 0.6)
    val = rng.uniform(vmin, 1.0)
    return hsv_to_rgb(hue, sat, val)


def texture(rng: np.random.Generator, rgb: np.ndarray, cx, cy, r, w=S, h=S) -> np.ndarray:
    """Colour field [h,w,3]: base colour x shading gradient x low-freq noise + pixel noise."""
    R = r * 1.25 + 2
    bx0, by0 = max(0, int(math.floor(cx - R))), max(0, int(math.floor(cy - R)))
    bx1, by1 = min(w, int(math.ceil(cx + R))), min(h, int(math.ceil(cy + R)))
    full = np.zeros((h, w, 3), np.float32)
    if bx1 <= bx0 or by1 <= by0:
        return full
    w, h = bx1 - bx0, by1 - by0
    cx, cy = cx - bx0, cy - by0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    g = ((xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)) / max(r, 1.0)
    shade = 1.0 + rng.uniform(0.0, 0.22) * np.clip(g, -1.5, 1.5)
    if rng.random() < 0.6:
        n = rng.normal(0, 1, (8, 8)).astype(np.float32)
        n = np.asarray(Image.fromarray(n).resize((w, h), Image.BICUBIC))
        shade = shade * (1.0 + rng.uniform(0.0, 0.08) * n)
    col = rgb[None, None, :] * shade[..., None]
    sig = rng.uniform(0, 10)
    if sig > 1:
        col = col + rng.normal(0, sig, (h, w, 1)).astype(np.float32) * rng.uniform(0.5, 1.0) + \
            rng.normal(0, sig * 0.4, (h, w, 3)).astype(np.float32)
    full[by0:by1, bx0:bx1] = col
    return full


def pick_concepts(rng: np.random.Generator, n: int) -> list[int]:
    """Concept per object. Themes: same colour / different shapes, same shape / different colours."""
    nsh, ncol = len(SHAPE_NAMES), len(COLOUR_NAMES)
    u = rng.random()
    out: list[int] = []
    if u < 0.40:
        col = COLOUR_NAMES[rng.integers(ncol)]
        k = min(n, int(rng.integers(2, 4)))
        for s in rng.choice(nsh, k, replace=False):
            out.append(concept_index(col, SHAPE_NAMES[s]))
    elif u < 0.70:
        shp = SHAPE_NAMES[rng.integers(nsh)]
        k = min(n, int(rng.integers(2, 4)))
        for c in rng.choice(ncol, k, replace=False):
            out.append(concept_index(COLOUR_NAMES[c], shp))
    while len(out) < n:
        if rng.random() < 0.08 and out:
            out.append(out[rng.integers(len(out))])  # a second instance of a present concept
        else:
            c = int(rng.integers(NUM_CONCEPTS))
            if c in out:
                continue
            out.append(c)
    rng.shuffle(out)
    return out


def render_scene(rng: np.random.Generator, bg_files: list[str], w: int = S, h: int = S,
                 n_objects: int | None = None, concepts: list[int] | None = None):
    """Returns img uint8 [h,w,3], concept ids (sorted unique), visible alpha per concept [k,h,w] float32."""
    img = background(rng, bg_files, w, h)
    n = int(rng.integers(2, 7)) if n_objects is None else n_objects
    cids = pick_concepts(rng, n) if concepts is None else list(concepts)
    scale = min(w, h) / S
    vis: list[np.ndarray] = []
    owner: list[int] = []
    orig_area: list[float] = []
    # neutral distractor shapes (white/grey/black), not a concept
    for _ in range(int(rng.random() < 0.3) + int(rng.random() < 0.1)):
        shp = SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))]
        r = rng.uniform(12, 36) * scale
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        al = shape_alpha(rng, shp, cx, cy, r, rng.uniform(0, 2 * math.pi), w, h)
        grey = rng.uniform(10, 245)
        col = texture(rng, np.array([grey] * 3, np.float32) + rng.uniform(-8, 8, 3).astype(np.float32), cx, cy, r, w, h)
        img = img * (1 - al[..., None]) + col * al[..., None]
    for c in cids:
        shp = CONCEPTS[c].shape
        for _try in range(12):
            r = rng.uniform(11, 44) * scale if rng.random() < 0.85 else rng.uniform(8, 60) * scale
            m = r * 0.4  # allow a little out of frame
            cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
            al = shape_alpha(rng, shp, cx, cy, r, rng.uniform(0, 2 * math.pi), w, h)
            area = float(al.sum())
            if area < 60 * scale * scale:
                continue
            ok = all(float((v * (1 - al)).sum()) >= 0.55 * a0 for v, a0 in zip(vis, orig_area))
            if ok:
                break
        else:
            continue
        for i in range(len(vis)):
            vis[i] = vis[i] * (1 - al)
        col = texture(rng, object_colour(rng, CONCEPTS[c].colour), cx, cy, r, w, h)
        # soft drop shadow sometimes
        if rng.random() < 0.3:
            sh = np.roll(np.roll(al, int(rng.integers(2, 6)), 0), int(rng.integers(2, 6)), 1) * rng.uniform(0.2, 0.5)
            img = img * (1 - sh[..., None])
        img = img * (1 - al[..., None]) + col * al[..., None]
        vis.append(al)
        owner.append(c)
        orig_area.append(area)
    uniq = sorted(set(owner))
    alphas = np.zeros((len(uniq), h, w), np.float32)
    for v, c in zip(vis, owner):
        k = uniq.index(c)
        alphas[k] = np.maximum(alphas[k], v)
    # global camera-ish effects
    if rng.random() < 0.3:
        img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
            (w // 2, h // 2), Image.BILINEAR).resize((w, h), Image.BILINEAR), np.float32)
    img = img + rng.normal(0, rng.uniform(0, 4), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), uniq, alphas


def down56(alpha: np.ndarray) -> np.ndarray:
    """[k,224,224] visible alpha -> [k,56,56] area fraction."""
    k = alpha.shape[0]
    return alpha.reshape(k, 56, 4, 56, 4).mean((2, 4))


# ---------------------------------------------------------------- cache writer
_G = {}


def _init(split, seed, out):
    _G["files"] = background_files(split)
    _G["seed"] = seed
    n = np.load(os.path.join(out, "images.npy"), mmap_mode="r+")
    _G["img"] = n
    _G["cids"] = np.load(os.path.join(out, "cids.npy"), mmap_mode="r+")
    _G["m56"] = np.load(os.path.join(out, "m56.npy"), mmap_mode="r+")


def _work(rng_range):
    a, b = rng_range
    for i in range(a, b):
        rng = np.random.default_rng([_G["seed"], i])
        img, cids, al = render_scene(rng, _G["files"])
        cids, al = cids[:MAXK], al[:MAXK]
        _G["img"][i] = img
        cc = np.full(MAXK, -1, np.int16)
        cc[:len(cids)] = cids
        _G["cids"][i] = cc
        m = np.zeros((MAXK, 56, 56), np.uint8)
        m[:len(cids)] = np.round(down56(al) * 255).astype(np.uint8)
        _G["m56"][i] = m
    _G["img"].flush()
    return b - a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=["train", "eval"], default="train")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=24000)
    ap.add_argument("--out", default=os.path.join(WORK, "data", "train"))
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    extract_frames()
    os.makedirs(a.out, exist_ok=True)
    files = background_files(a.split)
    print(f"{a.split}: {len(files)} background images", flush=True)
    np.lib.format.open_memmap(os.path.join(a.out, "images.npy"), "w+", np.uint8, (a.n, S, S, 3))
    np.lib.format.open_memmap(os.path.join(a.out, "cids.npy"), "w+", np.int16, (a.n, MAXK))
    np.lib.format.open_memmap(os.path.join(a.out, "m56.npy"), "w+", np.uint8, (a.n, MAXK, 56, 56))
    chunks = [(i, min(i + 200, a.n)) for i in range(0, a.n, 200)]
    t0 = time.time()
    done = 0
    with Pool(a.workers, initializer=_init, initargs=(a.split, a.seed, a.out)) as pool:
        for k in pool.imap_unordered(_work, chunks):
            done += k
            if done % 2000 < 200:
                print(f"{done}/{a.n} scenes, {done / (time.time() - t0):.1f}/s", flush=True)
    with open(os.path.join(a.out, "DONE"), "w") as f:
        f.write(f"{a.n} {a.split} seed={a.seed}\n")
    print(f"done {a.n} in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
