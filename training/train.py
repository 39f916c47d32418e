"""Train maskd-vitseg-t8 on the cached synthetic scenes (CPU, fp32; --bf16 for CPUs with native bf16).

Every image is scored against ALL 48 concepts (late fusion: one encoder pass per image),
each concept with a randomly drawn phrasing embedding from the int8 MiniLM encoder.
Loss = 20 * BCE(mask logits, soft targets, all concepts) + dice(present concepts)
       + BCE(presence logits, present/absent, all concepts).

The schedule is time-based (--minutes) so a run fits a wall-clock budget on a shared CPU:
cosine LR over the budget.  For the first --low-frac of the time the model sees random
--crop x --crop (112) crops of the 224 scenes, aligned to the 16-px patch grid, with the
matching 7x7 window of the 14x14 position embedding (same object scale as at run time,
4x fewer tokens); then full 224 scenes.  Checkpoints (with EMA weights) every --ckpt-min minutes to training/work/ckpt/.

Usage:
  python training/train.py --minutes 70
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
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from concepts import CONCEPTS, NUM_CONCEPTS, SHAPE_NAMES, phrasings  # noqa: E402
from model import MEAN, STD, ViTSeg, param_count  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "training", "work")
PHRASES_PER_CONCEPT = 32


def text_table(path=os.path.join(WORK, "text_emb.npz")):
    """Phrasing embeddings from the int8 encoder: emb [N,384], concept [N], first index per concept."""
    if os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        return z["emb"], z["concept"], [str(s) for s in z["text"]]
    import textenc

    texts, cons = [], []
    for c in CONCEPTS:
        ph = phrasings(c)
        rng = random.Random(1234 + c.idx)
        rest = ph[1:]
        rng.shuffle(rest)
        sel = [ph[0]] + rest[:PHRASES_PER_CONCEPT - 1]
        texts += sel
        cons += [c.idx] * len(sel)
    t0 = time.time()
    emb = textenc.encode(texts)
    print(f"encoded {len(texts)} phrasings in {time.time() - t0:.0f}s", flush=True)
    np.savez(path, emb=emb, concept=np.array(cons, np.int16), text=np.array(texts))
    return emb, np.array(cons, np.int16), texts


class Data:
    def __init__(self, d):
        self.img = np.load(os.path.join(d, "images.npy"), mmap_mode="r")
        self.cids = np.load(os.path.join(d, "cids.npy"))
        self.m56 = np.load(os.path.join(d, "m56.npy"), mmap_mode="r")
        self.n = self.img.shape[0]

    def batch(self, idx, flip_rng=None):
        idx = np.sort(idx)
        img = torch.from_numpy(np.ascontiguousarray(self.img[idx])).permute(0, 3, 1, 2).float()
        mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(STD).view(1, 3, 1, 1) * 255
        img = (img - mean) / std
        B = len(idx)
        tgt = torch.zeros(B, NUM_CONCEPTS, 56, 56)
        m = torch.from_numpy(np.ascontiguousarray(self.m56[idx])).float() / 255.0
        cids = self.cids[idx]
        for b in range(B):
            for k in range(cids.shape[1]):
                c = int(cids[b, k])
                if c >= 0:
                    tgt[b, c] = m[b, k]
        if flip_rng is not None:
            for b in range(B):
                if flip_rng.random() < 0.5:
                    img[b] = img[b].flip(-1)
                    tgt[b] = tgt[b].flip(-1)
                if flip_rng.random() < 0.25:
                    img[b] = img[b].flip(-2)
                    tgt[b] = tgt[b].flip(-2)
        pres = (tgt.sum((2, 3)) >= 1.0).float()  # >= 1 pixel of area at 56x56 (16 px at 224)
        return img, tgt, pres


def pick(pres_row, rng, k):
    """Concept indices to score for one image: present first, then hard, then random negatives."""
    present = [int(c) for c in np.nonzero(pres_row > 0.5)[0]][:k]
    shapes = len(SHAPE_NAMES)
    hard = {ci * shapes + s for c in present for ci in [c // shapes] for s in range(shapes)}
    hard |= {cc * shapes + c % shapes for c in present for cc in range(NUM_CONCEPTS // shapes)}
    hard = [c for c in hard if c not in present]
    rng.shuffle(hard)
    rest = [c for c in range(NUM_CONCEPTS) if c not in present and c not in hard[:k]]
    rng.shuffle(rest)
    n_hard = max(1, (k - len(present)) * 2 // 3)
    out = present + hard[:n_hard]
    out += rest[:k - len(out)]
    return out[:k]


class Phrasings:
    """The phrasing embeddings grouped by concept: concept c owns rows starts[c] ..
    starts[c] + counts[c] of `emb`, the first of them its canonical phrasing."""

    def __init__(self):
        emb, con, self.texts = text_table()
        self.emb = torch.from_numpy(emb).float()
        self.starts = np.zeros(NUM_CONCEPTS, np.int64)
        self.counts = np.zeros(NUM_CONCEPTS, np.int64)
        for c in range(NUM_CONCEPTS):
            w = np.nonzero(con == c)[0]
            self.starts[c], self.counts[c] = w[0], len(w)
        self.canon = self.emb[torch.from_numpy(self.starts)]

    def draw(self, sel, rng, p_canon=0.3):
        """Concept ids [B,K] -> one embedding each [B,K,384]: canonical with p_canon, else random."""
        r = torch.from_numpy(rng.random(sel.shape))
        off = (torch.from_numpy(rng.random(sel.shape)) * torch.from_numpy(self.counts)[sel]).long()
        off = torch.where(r < p_canon, torch.zeros_like(off), off)
        return self.emb[torch.from_numpy(self.starts)[sel] + off]


def crop(img, tgt, rng, res):
    """Random res x res crops aligned to the patch grid -> img, tgt, pres, offsets (patch units)."""
    g = res // 16
    offsets = [(int(rng.integers(0, 15 - g)), int(rng.integers(0, 15 - g))) for _ in range(img.shape[0])]
    img = torch.stack([img[b, :, oy * 16:oy * 16 + res, ox * 16:ox * 16 + res] for b, (oy, ox) in enumerate(offsets)])
    tgt = torch.stack([tgt[b, :, oy * 4:oy * 4 + res // 4, ox * 4:ox * 4 + res // 4]
                       for b, (oy, ox) in enumerate(offsets)])
    return img, tgt, (tgt.sum((2, 3)) >= 1.0).float(), offsets


def choose_prompts(tgt, pres, rng, k, phrasings):
    """K prompts per image (see `pick`), each with a drawn phrasing -> tgt, pres, text [B,K,...]."""
    sel = torch.from_numpy(np.stack([pick(pres[b].numpy(), rng, k) for b in range(tgt.shape[0])]))
    tgt = torch.gather(tgt, 1, sel[:, :, None, None].expand(-1, -1, tgt.shape[2], tgt.shape[3]))
    return tgt, torch.gather(pres, 1, sel), phrasings.draw(sel, rng)


def dice_loss(logits, tgt, w):
    p = torch.sigmoid(logits).flatten(2)
    t = tgt.flatten(2)
    inter = (p * t).sum(-1)
    d = 1 - (2 * inter + 1) / (p.sum(-1) + t.sum(-1) + 1)
    return (d * w).sum() / w.sum().clamp(min=1)


def iou_stats(mask_logits, pres_logits, tgt, pres):
    """Quick validation at 56x56: mean IoU over present concepts, absent rate (<=1% coverage)."""
    pm = (torch.sigmoid(mask_logits) > 0.5) & (torch.sigmoid(pres_logits) > 0.5)[..., None, None]
    t = tgt > 0.5
    inter = (pm & t).flatten(2).sum(-1).float()
    union = (pm | t).flatten(2).sum(-1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    present = pres > 0.5
    cover = pm.flatten(2).float().mean(-1)
    return iou[present].tolist(), (cover[~present] <= 0.01).float().tolist()


@torch.no_grad()
def validate(model, val, emb_canon, n=60, bs=6):
    model.eval()
    ious, absent = [], []
    dev = next(model.parameters()).device
    for s in range(0, min(n, val.n), bs):
        img, tgt, pres = val.batch(np.arange(s, min(s + bs, n)))
        text = emb_canon[None].expand(img.shape[0], -1, -1)
        mk, pr = model(img.to(dev), text.to(dev))
        a, b = iou_stats(mk.float().cpu(), pr.float().cpu(), tgt, pres)
        ious += a
        absent += b
    model.train()
    return float(np.mean(ious)), float(np.mean(absent))


def load_matching(model, state):
    """Loads the tensors whose names and shapes match; returns the names left at init."""
    own = model.state_dict()
    ok = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(ok, strict=False)
    return [k for k in own if k not in ok]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=70)
    ap.add_argument("--bs", type=int, default=16)
    ap.add_argument("--bs-high", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--k", type=int, default=8, help="prompts scored per image")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (only where the CPU has native bf16)")
    ap.add_argument("--low-frac", type=float, default=0.8)
    ap.add_argument("--distractor-weight", type=float, default=0.0,
                    help="extra BCE weight on pixels of other objects than the prompted one")
    ap.add_argument("--small-weight", type=float, default=0.0,
                    help="extra weight on the whole loss of prompts whose object covers < 2%% of the "
                         "image (docs/MODEL.md: small objects are where the masks fail)")
    ap.add_argument("--refine", action="store_true",
                    help="add model.Refine, a text-conditioned 56x56 correction of the mask logits (not shipped)")
    ap.add_argument("--conv-tokens", action="store_true",
                    help="add model.ConvTokens, a conv path from the stem to the token grid (session 9)")
    ap.add_argument("--ckpt-min", type=float, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu",
                    help="cpu, cuda, or auto (cuda where torch sees a GPU): the remedy docs/MODEL.md names "
                         "for the accuracy gap is GPU-sized training; data stays on the host, batches move")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.path.join(WORK, "data", "train"))
    ap.add_argument("--val", default=os.path.join(WORK, "data", "val"))
    ap.add_argument("--out", default=os.path.join(WORK, "ckpt"))
    ap.add_argument("--resume", default="")
    ap.add_argument("--warm-restart", type=float, default=0.0,
                    help="after --resume with a fresh optimizer: linear LR warm-up over this many minutes")
    ap.add_argument("--fresh-schedule", action="store_true",
                    help="after --resume: keep weights, EMA and optimizer moments but run a new cosine "
                         "schedule over --minutes (a second stage at a lower --lr)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    rng = np.random.default_rng(a.seed)
    flip_rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)

    phr = Phrasings()
    emb_canon = phr.canon

    data = Data(a.data)
    val = Data(a.val) if os.path.exists(os.path.join(a.val, "DONE")) else None
    model = ViTSeg(refine=a.refine, conv_tokens=a.conv_tokens)
    ema = ViTSeg(refine=a.refine, conv_tokens=a.conv_tokens)
    ema.load_state_dict(model.state_dict())
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(auto if a.device == "auto" else a.device)
    model.to(dev)
    ema.to(dev)
    for p in ema.parameters():
        p.requires_grad_(False)
    print(f"params {param_count(model)}; data {data.n} scenes; phrasings {len(phr.texts)}; device {dev}",
          flush=True)
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "pos" in n_ or "norm" in n_ else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.99))
    budget = a.minutes * 60
    elapsed0, step = 0.0, 0
    if a.resume:
        ck = torch.load(a.resume, map_location="cpu")
        missing = load_matching(model, ck["model"]) + load_matching(ema, ck["ema"])
        dropped = sorted({k.split(".")[0] for k in ck["model"] if k not in model.state_dict()})
        if dropped:  # e.g. a --conv-tokens checkpoint resumed without the flag
            print(f"warning: {a.resume} has modules this model lacks, not loaded: {', '.join(dropped)}", flush=True)
        if missing:  # architecture changed: reuse matching weights, fresh optimizer and schedule
            print(f"init from {a.resume}: {len(missing)} tensors left at init, fresh schedule", flush=True)
        elif "opt" in ck:
            opt.load_state_dict(ck["opt"])
        else:  # final.pt keeps weights only: same architecture, fresh optimizer
            print(f"init from {a.resume}: no optimizer state, fresh moments", flush=True)
        if not missing and not a.fresh_schedule:  # same architecture: continue its schedule
            elapsed0, step = ck["elapsed"], ck["step"]
        if a.fresh_schedule:
            print(f"second stage from {a.resume} (step {ck['step']}): new {a.minutes:.0f}-min schedule, "
                  f"peak lr {a.lr:.1e}", flush=True)
    t_start = time.time() - elapsed0
    last_ck = time.time()
    curve = open(os.path.join(WORK, "curve.tsv"), "a")
    log_l = []
    seen = 0
    while True:
        el = time.time() - t_start
        frac = el / budget
        if frac >= 1.0:
            break
        warm = 0.03
        lr = a.lr * (frac / warm if frac < warm else 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm))))
        lr = max(lr, a.lr * 0.01)
        if a.warm_restart > 0 and el - elapsed0 < a.warm_restart * 60:
            lr *= max(0.05, (el - elapsed0) / (a.warm_restart * 60))
        for g in opt.param_groups:
            g["lr"] = lr
        low = frac < a.low_frac
        res = a.crop if low else 224
        bs = a.bs if low else a.bs_high
        idx = rng.choice(data.n, bs, replace=False)
        img, tgt, pres = data.batch(idx, flip_rng)
        offsets = None
        if res != 224:
            img, tgt, pres, offsets = crop(img, tgt, rng, res)
        # K prompts per image: every present concept, then hard negatives (same colour or same
        # shape as a present one), then random absent ones; each with a random phrasing
        # every object of the scene, for the distractor weighting below
        objects = tgt.amax(1, keepdim=True) if a.distractor_weight > 0 else None
        tgt, pres, text = choose_prompts(tgt, pres, rng, a.k, phr)  # text [B,K,384]
        img, tgt, pres, text = img.to(dev), tgt.to(dev), pres.to(dev), text.to(dev)
        if objects is not None:
            objects = objects.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            mk, pr = model(img, text, offsets)
        mk, pr = mk.float(), pr.float()
        # per prompt: small present objects weigh (1 + small_weight) in both mask losses
        small = pres * (tgt.mean((2, 3)) < 0.02).float()
        pw = 1 + a.small_weight * small  # [B,K]
        w = pw[..., None, None].expand_as(tgt)
        if objects is not None:
            # pixels of OTHER objects (e.g. the red square for "red circle") weigh more:
            # the confusion the evaluation shows is a mask spilling onto them
            w = w * (1 + a.distractor_weight * (objects - tgt).clamp(min=0))
        l_bce = F.binary_cross_entropy_with_logits(mk, tgt, weight=w)
        l_dice = dice_loss(mk, tgt, pres * pw)
        l_pres = F.binary_cross_entropy_with_logits(pr, pres)
        loss = 5 * l_bce + l_dice + l_pres
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += bs
        d = min(0.99, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        log_l.append((loss.item(), l_bce.item(), l_dice.item(), l_pres.item()))
        if step % 20 == 0 or step <= 3:
            m = np.mean(log_l, 0)
            log_l = []
            el = time.time() - t_start
            print(f"step {step} t {el / 60:.1f}m res {res} lr {lr:.2e} loss {m[0]:.4f} bce {m[1]:.4f} "
                  f"dice {m[2]:.4f} pres {m[3]:.4f} img/s {seen / max(el - elapsed0, 1e-6):.1f}", flush=True)
        if time.time() - last_ck > a.ckpt_min * 60:
            save(a.out, model, ema, opt, step, time.time() - t_start, res, val, emb_canon, curve)
            last_ck = time.time()
    save(a.out, model, ema, opt, step, time.time() - t_start, res, val, emb_canon, curve, final=True)


def save(out, model, ema, opt, step, elapsed, res, val, emb_canon, curve, final=False):
    ck = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
          "elapsed": elapsed, "res": res}
    tmp = os.path.join(out, "last.pt.tmp")
    torch.save(ck, tmp)
    os.replace(tmp, os.path.join(out, "last.pt"))
    if final:
        torch.save({"ema": ema.state_dict(), "model": model.state_dict(), "step": step, "elapsed": elapsed},
                   os.path.join(out, "final.pt"))
    msg = f"checkpoint step {step} at {elapsed / 60:.1f} min (res {res})"
    if val is not None:
        t0 = time.time()
        miou, absent = validate(ema, val, emb_canon)
        miou_raw, absent_raw = validate(model, val, emb_canon) if final else (float("nan"), float("nan"))
        msg += f" val(EMA, 56px, all 48 concepts) mIoU {miou:.4f} absent-ok {absent:.4f} [{time.time() - t0:.0f}s]"
        if final:
            msg += f" raw mIoU {miou_raw:.4f} absent-ok {absent_raw:.4f}"
        curve.write(f"{elapsed / 60:.2f}\t{step}\t{res}\t{miou:.4f}\t{absent:.4f}\n")
        curve.flush()
    print(msg, flush=True)


if __name__ == "__main__":
    main()
