"""2:4 variants of a trained maskd-vitseg checkpoint, for the comparison of docs/SPARSE.md.

  magnitude : one-shot magnitude 2:4 (keep the 2 largest |w| of every 4 along the input dim)
  finetune  : magnitude masks fixed, weights fine-tuned for --minutes
  maskllm   : the mask of every group of 4 is a learnable categorical choice among its 6
              candidate 2:4 masks (MaskLLM, Fang et al. 2024): logits initialised from the
              magnitude each candidate keeps, sampled with Gumbel-softmax while the
              temperature anneals 4 -> 0.05, weights lightly tuned; hard argmax at the end.

Pruned layers: every Linear of the 8 encoder blocks and of the decoder's text-conditioned
blocks (qkv, proj, fc1, fc2), i.e. the transformer matmuls where the time goes. The patch
embedding, the stem, the decoder's convolutions and heads stay dense (first/last layers).
Torch stores Linear weights [out, in]; groups run along `in`, which is ONNX MatMul's K.

Loss while training = the task loss of train.py + distillation to the dense model's
mask and presence logits on the same batch.  The output checkpoint holds the masked
weights baked in (dense layout, every pruned layer obeys 2:4), ready for export.py.

  python training/sparse24.py --mode maskllm --minutes 15 --out training/work/ckpt/maskllm.pt
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import ViTSeg, for_state  # noqa: E402
from train import WORK, Data, Phrasings, choose_prompts, crop, dice_loss, validate  # noqa: E402

# The 6 ways to keep 2 of 4, as rows of 0/1.
CANDIDATES = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1],
                           [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.float32)


def targets(m: ViTSeg):
    out = []
    blocks = [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
    blocks += [(f"decoder.fuse.{i}", b) for i, b in enumerate(m.decoder.fuse)]
    for prefix, b in blocks:
        for name in ("qkv", "proj", "fc1", "fc2"):
            lin = getattr(b, name)
            if lin.in_features % 4 == 0:
                out.append((f"{prefix}.{name}", lin))
    return out


def shared_magnitude(w, share):
    """[out, in] -> [out/share, in/4, 4]: |w| summed over each run of `share` output rows."""
    o, i = w.shape
    return w.detach().abs().reshape(o // share, share, i // 4, 4).sum(1)


def magnitude_mask(w, share=1):
    """[out, in] -> 0/1 mask keeping the 2 largest |w| per group of 4 along `in` (ties: lower index);
    with share > 1 each run of `share` output rows keeps the same 2, by their summed |w|."""
    o, i = w.shape
    g = shared_magnitude(w, share)
    # stable: sort by (-|w|, position) so ties go to the lower position, as maskd-kernels does
    order = torch.argsort(-g + torch.arange(4) * 1e-12, dim=-1, stable=True)
    keep = torch.zeros_like(g)
    keep.scatter_(-1, order[..., :2], 1.0)
    return keep.repeat_interleave(share, 0).reshape(o, i)


class FixedMask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w):
        return w * self.mask


class LearnedMask(nn.Module):
    def __init__(self, w, init_scale, share=1):
        super().__init__()
        self.share = share
        kept = shared_magnitude(w, share) @ CANDIDATES.T  # [o/share, G, 6]
        # Prior from magnitude, as MaskLLM initialises from a one-shot mask: argmax = magnitude 2:4.
        kept = kept / kept.amax(-1, keepdim=True).clamp(min=1e-12)
        self.logits = nn.Parameter(kept * init_scale)
        self.tau = 4.0

    def forward(self, w):
        if self.training:
            y = F.gumbel_softmax(self.logits, tau=self.tau, hard=False, dim=-1)
        else:
            y = F.one_hot(self.logits.argmax(-1), 6).to(w.dtype)
        return w * (y @ CANDIDATES).repeat_interleave(self.share, 0).reshape(w.shape)


def check_24(m: ViTSeg):
    """Every pruned weight has <= 2 non-zeros per group of 4; returns (layers, kept fraction)."""
    kept, total = 0, 0
    for name, lin in targets(m):
        w = lin.weight.detach()
        nz = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert int(nz.max()) <= 2, name
        kept += int(nz.sum())
        total += w.numel()
    return len(targets(m)), kept / total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["magnitude", "finetune", "maskllm"], required=True)
    ap.add_argument("--ckpt", default=os.path.join(WORK, "ckpt", "final.pt"))
    ap.add_argument("--out", required=True)
    # A second phase after MaskLLM (as the paper fine-tunes after learning the masks):
    # --mode finetune on the MaskLLM checkpoint keeps its masks (the magnitude mask of
    # weights that already obey 2:4 is their own pattern) and distils from the dense one.
    ap.add_argument("--teacher", default=None, help="checkpoint distilled from [default: --ckpt]")
    ap.add_argument("--weights", default="model", choices=["model", "ema"],
                    help="which weights of the checkpoint (the shipped dense model uses the raw ones)")
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--bs", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    # Full 224 scenes: the dense model's last phase trained at 224, and 112-px crops
    # pulled the fine-tuned variants away from it (val mIoU fell 0.64 -> 0.60 in 8 min).
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--lr-w", type=float, default=1e-4, help="weight learning rate (finetune, maskllm)")
    # A strong magnitude prior and a slow logit rate: with 0.05 / 3.0 a fifth of the
    # groups left the magnitude mask within 150 steps and the model had no time to recover.
    ap.add_argument("--lr-mask", type=float, default=0.02, help="mask-logit learning rate (maskllm)")
    ap.add_argument("--init-scale", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    # Pairs of output columns with one 2:4 pattern per group: maskd-kernels's token kernel
    # then loads each input row once for both columns (docs/SPARSE.md, section 3).
    ap.add_argument("--share", type=int, default=1, help="output rows sharing each group's 2:4 pattern")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    flip_rng = random.Random(a.seed)

    ck = torch.load(a.ckpt, map_location="cpu")
    tstate = torch.load(a.teacher, map_location="cpu")[a.weights] if a.teacher else ck[a.weights]
    dense = for_state(tstate)
    dense.load_state_dict(tstate)
    dense.eval()
    m = for_state(ck[a.weights])
    m.load_state_dict(ck[a.weights])
    masks = []
    for name, lin in targets(m):
        if a.mode == "maskllm":
            par = LearnedMask(lin.weight, a.init_scale, a.share)
        else:
            par = FixedMask(magnitude_mask(lin.weight, a.share))
        P.register_parametrization(lin, "weight", par)
        masks.append(par)
    print(f"{a.mode}: {len(masks)} layers pruned 2:4 from {a.ckpt}, pattern shared by {a.share} output row(s)",
          flush=True)

    phr = Phrasings()
    emb_canon = phr.canon
    val = Data(os.path.join(WORK, "data", "val"))

    if a.mode != "magnitude":
        data = Data(os.path.join(WORK, "data", "train"))
        weights = [p for n, p in m.named_parameters() if "parametrizations" not in n or n.endswith("original")]
        groups = [{"params": weights, "lr": a.lr_w, "weight_decay": 0.0}]
        if a.mode == "maskllm":
            groups.append({"params": [p.logits for p in masks], "lr": a.lr_mask, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.99))
        base = [g["lr"] for g in opt.param_groups]
        t0 = time.time()
        step = 0
        m.train()
        while True:
            frac = (time.time() - t0) / (a.minutes * 60)
            if frac >= 1:
                break
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
            for p in masks:
                if isinstance(p, LearnedMask):  # MaskLLM anneals the temperature 4 -> 0.05
                    p.tau = 4.0 * (0.05 / 4.0) ** frac
            idx = rng.choice(data.n, a.bs, replace=False)
            img, tgt, pres = data.batch(idx, flip_rng)
            img, tgt, pres, offsets = crop(img, tgt, rng, a.crop)
            tgt, pres, text = choose_prompts(tgt, pres, rng, a.k, phr)
            with torch.no_grad():
                mk_t, pr_t = dense(img, text, offsets)
            mk, pr = m(img, text, offsets)
            task = 5 * F.binary_cross_entropy_with_logits(mk, tgt) + dice_loss(mk, tgt, pres) \
                + F.binary_cross_entropy_with_logits(pr, pres)
            distill = F.binary_cross_entropy_with_logits(mk, torch.sigmoid(mk_t)) \
                + F.binary_cross_entropy_with_logits(pr, torch.sigmoid(pr_t))
            loss = task + distill
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 20 == 0:
                print(f"step {step} t {(time.time() - t0) / 60:.1f}m loss {loss.item():.4f} task {task.item():.4f} "
                      f"distill {distill.item():.4f}", flush=True)

    m.eval()
    changed = 0
    if a.mode == "maskllm":
        for (name, lin), p in zip(targets(m), masks):
            prior = shared_magnitude(lin.parametrizations.weight.original, a.share) @ CANDIDATES.T
            learned = p.logits.argmax(-1) != prior.argmax(-1)
            changed += int(learned.sum())
    for name, lin in targets(m):
        P.remove_parametrizations(lin, "weight", leave_parametrized=True)
    layers, kept = check_24(m)
    miou, absent = validate(m, val, emb_canon)
    dm, da = validate(dense, val, emb_canon)
    print(f"{a.mode}: {layers} layers 2:4 (kept {kept:.3f} of weights), groups whose mask differs from magnitude: "
          f"{changed}; val mIoU {miou:.4f} absent-ok {absent:.4f} (dense {dm:.4f} / {da:.4f})", flush=True)
    state = m.state_dict()
    torch.save({"ema": state, "model": state, "step": ck.get("step", 0), "elapsed": ck.get("elapsed", 0.0),
                "sparse": a.mode, "share": a.share}, a.out)


if __name__ == "__main__":
    main()
