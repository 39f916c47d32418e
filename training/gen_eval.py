"""Build the held-out evaluation set in models/eval/ (numpy + Pillow only).

Generated part: --n scenes (default 150) from a different seed (2000) than training (1) and
validation (1000), on the HELD-OUT backgrounds only (gen_data.background_files("eval")).
Per scene: every present concept, prompted with a varied phrasing (the canonical name in
~40% of cases, else a phrasing drawn from ALL phrasings of the concept, most of which the
training run never saw), plus 2-3 absent concepts (preferably hard: same colour / other shape,
same shape / other colour).

Real part (kind = "real"): photos with real ground truth shipped in PyPI packages:
  imgaug 0.4.0  quokka.jpg + polygon annotation   -> prompts "quokka", "animal"
  stardist 0.9.2 img2d.tif + mask2d.tif (nuclei)   -> prompts "nuclei", "cell nucleus"
  each also with two absent prompts from the concept set.

Files: images/NNNN.jpg (224x224 RGB, JPEG q92), masks/NNNN_KK.png (1-bit, 224x224),
index.toml ([[sample]] image, [[sample.prompt]] text, concept, mask (omitted = absent), kind).

Usage: python training/gen_eval.py [--n 150] [--seed 2000]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import zipfile

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from concepts import CONCEPTS, NUM_CONCEPTS, concept_index, phrasings  # noqa: E402
import gen_data  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "eval")
PARTS = os.path.join(ROOT, "training", "work", "parts")


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def hard_absents(rng: random.Random, present: list[int], k: int) -> list[int]:
    cand_hard = set()
    for c in present:
        col, shp = CONCEPTS[c].colour, CONCEPTS[c].shape
        for o in CONCEPTS:
            if (o.colour == col) != (o.shape == shp):
                cand_hard.add(o.idx)
    cand_hard -= set(present)
    hard = sorted(cand_hard)
    rng.shuffle(hard)
    out = hard[:max(1, k - 1)]
    rest = [c for c in range(NUM_CONCEPTS) if c not in present and c not in out]
    while len(out) < k:
        out.append(rest.pop(rng.randrange(len(rest))))
    return out


def save_mask(m: np.ndarray, path: str):
    Image.fromarray((m > 0).astype(np.uint8) * 255).convert("1").save(path, optimize=True)


def real_samples():
    """Yield (name, img uint8 [224,224,3], [(text, concept, mask or None)])."""
    os.makedirs(PARTS, exist_ok=True)
    import subprocess

    py = sys.executable
    for spec in ("imgaug==0.4.0", "stardist==0.9.2"):
        name = spec.split("==")[0]
        if not glob.glob(os.path.join(PARTS, f"{name}-*.whl")):
            subprocess.run([py, "-m", "pip", "download", "--no-deps", "-d", PARTS, spec], check=True)
    # quokka: square crop around the annotated animal, resized to 224
    with zipfile.ZipFile(glob.glob(os.path.join(PARTS, "imgaug-0.4.0-*.whl"))[0]) as z:
        img = Image.open(z.open("imgaug/quokka.jpg")).convert("RGB")
        ann = json.load(z.open("imgaug/quokka_annotations.json"))
    W, H = img.size  # 960 x 643
    side = H
    x0 = max(0, min(W - side, 349 - side // 2))  # centred on the animal (bbox x 148..550)
    poly = [(p["x"] - x0, p["y"]) for p in ann["polygons"][0]["keypoints"]]
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    im = np.asarray(img.crop((x0, 0, x0 + side, side)).resize((224, 224), Image.BICUBIC))
    m = np.asarray(mask.resize((224, 224), Image.BILINEAR)) >= 128
    yield "quokka", im, [("quokka", "quokka", m), ("animal", "quokka", m),
                         ("red circle", "red circle", None), ("blue square", "blue square", None)]
    # stardist nuclei: 512x512 16-bit image + label mask -> 224
    with zipfile.ZipFile(glob.glob(os.path.join(PARTS, "stardist-0.9.2-*.whl"))[0]) as z:
        a = np.asarray(Image.open(z.open("stardist/data/images/img2d.tif"))).astype(np.float32)
        lab = np.asarray(Image.open(z.open("stardist/data/images/mask2d.tif")))
    a = np.clip((a - np.percentile(a, 1)) / (np.percentile(a, 99.8) - np.percentile(a, 1) + 1e-6), 0, 1) * 255
    im = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((224, 224), Image.BICUBIC).convert("RGB"))
    m = np.asarray(Image.fromarray(((lab > 0) * 255).astype(np.uint8)).resize((224, 224), Image.BILINEAR)) >= 128
    yield "nuclei", im, [("nuclei", "nuclei", m), ("cell nucleus", "nuclei", m),
                         ("yellow star", "yellow star", None), ("green triangle", "green triangle", None)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    gen_data.extract_frames()
    files = gen_data.background_files("eval")
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(a.out, sub), exist_ok=True)
        for f in glob.glob(os.path.join(a.out, sub, "*")):
            os.remove(f)
    lines = ["# maskd held-out evaluation set, made by training/gen_eval.py "
             f"(seed {a.seed}, {a.n} generated scenes on held-out backgrounds + real photos).",
             "# A prompt without `mask` is an absent concept: the expected mask is empty.", ""]
    n_pres = n_abs = 0
    for i in range(a.n):
        rng = np.random.default_rng([a.seed, i])
        prng = random.Random(a.seed * 100003 + i)
        img, cids, al = gen_data.render_scene(rng, files)
        name = f"{i:04d}"
        Image.fromarray(img).save(os.path.join(a.out, "images", f"{name}.jpg"), quality=92)
        lines += ["[[sample]]", f'image = "images/{name}.jpg"']
        k = 0
        for c, alpha in zip(cids, al):
            m = alpha >= 0.5
            if m.sum() < 16:
                continue  # almost fully hidden: not counted as present nor absent
            ph = phrasings(CONCEPTS[c])
            text = ph[0] if prng.random() < 0.4 else prng.choice(ph[1:])
            mp = f"masks/{name}_{k:02d}.png"
            save_mask(m, os.path.join(a.out, mp))
            lines += ["[[sample.prompt]]", f"text = {toml_str(text)}", f"concept = {toml_str(CONCEPTS[c].name)}",
                      f'mask = "{mp}"', 'kind = "generated"']
            k += 1
            n_pres += 1
        for c in hard_absents(prng, list(cids), prng.choice([2, 3])):
            ph = phrasings(CONCEPTS[c])
            text = ph[0] if prng.random() < 0.5 else prng.choice(ph[1:])
            lines += ["[[sample.prompt]]", f"text = {toml_str(text)}", f"concept = {toml_str(CONCEPTS[c].name)}",
                      'kind = "generated"']
            n_abs += 1
        lines.append("")
    n_real = 0
    for name, img, prompts in real_samples():
        Image.fromarray(img).save(os.path.join(a.out, "images", f"real_{name}.jpg"), quality=92)
        lines += ["[[sample]]", f'image = "images/real_{name}.jpg"']
        for k, (text, concept, m) in enumerate(prompts):
            lines += ["[[sample.prompt]]", f"text = {toml_str(text)}", f"concept = {toml_str(concept)}"]
            if m is not None:
                mp = f"masks/real_{name}_{k:02d}.png"
                save_mask(m, os.path.join(a.out, mp))
                lines.append(f'mask = "{mp}"')
            lines.append('kind = "real"')
            n_real += 1
        lines.append("")
    with open(os.path.join(a.out, "index.toml"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    tot = sum(os.path.getsize(p) for p in glob.glob(os.path.join(a.out, "**", "*"), recursive=True) if os.path.isfile(p))
    print(f"eval set: {a.n} generated scenes, {n_pres} present + {n_abs} absent prompts, "
          f"{n_real} real prompts; {tot / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
