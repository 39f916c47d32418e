"""Is model B better than model A on the held-out set, or is it the set's noise?

The held-out set has 562 present and 370 absent prompts, and the experiments of
docs/MODEL.md differ by 1-5 points, so each difference is given with a 95 % interval from
a paired bootstrap: the same resampled prompts score both models (resampling images,
so that a scene's prompts move together). Figures: mIoU with presence ignored, and mIoU
on the frontier where absent-ok reaches 0.80 (as `presence_sweep.py`, threshold set on
each resample).

  python training/paired_bootstrap.py models/default.toml models/v24_s9full.toml
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from presence_sweep import image_scores, predictions  # noqa: E402


def per_image(manifest: str, cache: dict):
    """Per image: (present [n,2] of (presence logit, IoU), absent [m,2] of (logit, coverage))."""
    return [image_scores(*sample) for sample in predictions(manifest, cache)]


def frontier(P, A, target=0.80):
    """mIoU at the lowest presence threshold whose absent-ok reaches `target`."""
    fail = np.sort(A[A[:, 1] > 0.01, 0])[::-1]  # absent prompts that a low threshold lets through
    allowed = int(np.floor((1 - target) * len(A) + 1e-9))
    t = fail[allowed] if allowed < len(fail) else -np.inf
    return float(np.mean(np.where(P[:, 0] > t, P[:, 1], 0.0)))


def figures(rows, idx):
    P = np.concatenate([rows[i][0] for i in idx])
    A = np.concatenate([rows[i][1] for i in idx])
    return P[:, 1].mean(), frontier(P, A)


def main():
    a, b = sys.argv[1], sys.argv[2]
    cache: dict = {}
    ra, rb = per_image(a, cache), per_image(b, cache)
    n = len(ra)
    rng = np.random.default_rng(0)
    full = np.arange(n)
    fa, fb = figures(ra, full), figures(rb, full)
    diffs = []
    for _ in range(2000):
        idx = rng.integers(0, n, n)
        xa, xb = figures(ra, idx), figures(rb, idx)
        diffs.append((xb[0] - xa[0], xb[1] - xa[1]))
    d = np.array(diffs)
    for k, name in enumerate(("presence ignored", "frontier at absent-ok 0.80")):
        lo, hi = np.percentile(d[:, k], [2.5, 97.5])
        print(f"{name}: A {fa[k]:.4f}  B {fb[k]:.4f}  B-A {fb[k] - fa[k]:+.4f}  95% [{lo:+.4f}, {hi:+.4f}]  "
              f"P(B>A) {np.mean(d[:, k] > 0):.3f}")
    print(f"A = {a}\nB = {b}\n{n} images, paired bootstrap over images, 2000 resamples")


if __name__ == "__main__":
    main()
