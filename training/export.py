"""Export a trained checkpoint to ONNX (opset 20, non-dynamo torch.onnx.export) into models/seg/.

Opset 20 has a `Gelu(approximate="tanh")` node, which tract runs as one fused op; opset 17
spelled each GELU as 9 element-wise nodes, a quarter of a frame in tract (~30 of ~127 ms,
`maskd bench --profile`). MASKD_OPSET=17 reproduces the older graphs.

Graphs (all share ONE external weights file models/seg/weights.bin; identical initialisers
are stored once, so the full model and the stages do not duplicate weights):
  seg.onnx       image f32[1,3,224,224], text f32[P,384] -> mask_logits f32[P,56,56], presence_logits f32[P]
  embed.onnx     image -> tokens f32[1,196,192], skip f32[1,48,56,56]
  blockK.onnx    tokens f32[1,T,192] -> tokens_out f32[1,T,192], attn_received f32[1,T]   (K = 0..7)
  decoder.onnx   tokens f32[1,196,192], skip f32[1,48,56,56], text f32[P,384] -> mask_logits, presence_logits

Checks (printed): onnxruntime vs PyTorch, the embed->block0..7->decoder chain vs seg.onnx,
blocks at other token counts T, onnx.checker.  Also writes models/default.toml.

Calibration (--calibrate, default on): on the VALIDATION scenes (training/work/data/val, seed
1000, held-out backgrounds; NOT the models/eval set) two scalars are tuned by grid search:
a shift of the mask bias and a shift of the presence bias, so that the manifest thresholds
(0.5 / 0.5) give the best mean IoU while keeping absent prompts empty (>= 95% if reachable).

Usage: python training/export.py [--ckpt training/work/ckpt/last.pt] [--weights ema|model]
"""
from __future__ import annotations

import argparse
import math
import hashlib
import os
import shutil
import sys
import tempfile

import numpy as np
import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import (DEPTH, MEAN, SKIP_C, STD, WIDTH, SegBlock, SegDecoder, SegEmbed, SegFull, ViTSeg, for_state,  # noqa: E402
                   decompose_layernorms)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
SEG = os.path.join(MODELS, "seg")
OPSET = int(os.environ.get("MASKD_OPSET", "20"))
EXTERNAL_MIN_BYTES = 256  # smaller tensors (shape constants, scalars) stay inline


def load_model(ckpt: str, which: str = "ema") -> ViTSeg:
    ck = torch.load(ckpt, map_location="cpu")
    state = ck[which] if which in ck else ck["ema"]
    m = for_state(state)
    m.load_state_dict(state)
    m.eval()
    decompose_layernorms(m)
    return m, ck.get("step", -1), ck.get("elapsed", -1)


@torch.no_grad()
def calibrate(m: ViTSeg, n: int = 200):
    """Grid-search mask-bias and presence-bias shifts on the validation scenes (56x56 metric)."""
    from train import Data, Phrasings

    vd = os.path.join(ROOT, "training", "work", "data", "val")
    if not os.path.exists(os.path.join(vd, "DONE")):
        print("calibrate: no validation data, skipped")
        return None
    E = Phrasings().canon
    val = Data(vd)
    dec = m.decoder
    L, H, T, PR = [], [], [], []
    for s0 in range(0, min(n, val.n), 20):
        img, tgt, pres = val.batch(np.arange(s0, min(s0 + 20, n)))
        x, skip = m.encode(img)
        mk, head = dec.heads(x, skip, E[None].expand(img.shape[0], -1, -1))
        L.append(mk)
        H.append(head)
        T.append(tgt > 0.5)
        PR.append(pres > 0.5)
    L, H, T, PR = torch.cat(L), torch.cat(H), torch.cat(T), torch.cat(PR)
    a, b = float(dec.pres_a), float(dec.pres_b)
    mx = L.amax(dim=(2, 3))
    best = None
    for dm in np.arange(-3.0, 3.01, 0.25):
        pm = (L + dm) > 0
        inter = (pm & T).flatten(2).sum(-1).float()
        union = (pm | T).flatten(2).sum(-1).float()
        cover = pm.flatten(2).float().mean(-1)
        base = H + a * (mx + dm) + b
        for dp in np.arange(-8.0, 6.01, 0.25):
            on = (base + dp) > 0
            iou = torch.where(on, inter / union.clamp(min=1), torch.zeros_like(inter))[PR].mean().item()
            ab = ((~on) | (cover <= 0.01))[~PR].float().mean().item()
            score = iou + (0.0 if ab >= 0.95 else (ab - 0.95) * 2)
            if best is None or score > best[0]:
                best = (score, float(dm), float(dp), iou, ab)
    _, dm, dp, iou, ab = best
    on0 = (H + a * mx + b) > 0
    pm0 = L > 0
    iou0 = torch.where(on0, (pm0 & T).flatten(2).sum(-1).float() / (pm0 | T).flatten(2).sum(-1).float().clamp(min=1),
                       torch.zeros_like(mx))[PR].mean().item()
    dec.mask_bias += dm
    dec.pres_b += dp - a * dm
    print(f"calibrate on {L.shape[0]} val scenes: mask-bias shift {dm:+.2f}, presence shift {dp:+.2f}: "
          f"val mIoU(56px) {iou0:.4f} -> {iou:.4f}, absent-ok {ab:.4f}", flush=True)
    return {"mask_shift": dm, "presence_shift": dp, "val_miou": iou, "val_absent_ok": ab}


def export_graphs(m: ViTSeg, tmp: str):
    img = torch.randn(1, 3, 224, 224)
    text = torch.randn(3, 384)
    kw = dict(opset_version=OPSET, do_constant_folding=True, dynamo=False)
    with torch.no_grad():
        torch.onnx.export(SegFull(m), (img, text), os.path.join(tmp, "seg.onnx"),
                          input_names=["image", "text"], output_names=["mask_logits", "presence_logits"],
                          dynamic_axes={"text": {0: "P"}, "mask_logits": {0: "P"}, "presence_logits": {0: "P"}}, **kw)
        torch.onnx.export(SegEmbed(m), (img,), os.path.join(tmp, "embed.onnx"),
                          input_names=["image"], output_names=["tokens", "skip"], **kw)
        tok = torch.randn(1, 196, WIDTH)
        for i, b in enumerate(m.blocks):
            torch.onnx.export(SegBlock(b), (tok,), os.path.join(tmp, f"block{i}.onnx"),
                              input_names=["tokens"], output_names=["tokens_out", "attn_received"],
                              dynamic_axes={"tokens": {1: "T"}, "tokens_out": {1: "T"}, "attn_received": {1: "T"}},
                              **kw)
        skip = torch.randn(1, SKIP_C, 56, 56)
        torch.onnx.export(SegDecoder(m), (tok, skip, text), os.path.join(tmp, "decoder.onnx"),
                          input_names=["tokens", "skip", "text"], output_names=["mask_logits", "presence_logits"],
                          dynamic_axes={"text": {0: "P"}, "mask_logits": {0: "P"}, "presence_logits": {0: "P"}},
                          **kw)


GRAPHS = ["seg", "embed"] + [f"block{i}" for i in range(DEPTH)] + ["decoder"]


def constants_to_initializers(model: onnx.ModelProto):
    """Move big Constant nodes to initializers so they can be shared through weights.bin."""
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = node.attribute[0].t
            arr = numpy_helper.to_array(t)
            if arr.nbytes >= EXTERNAL_MIN_BYTES:
                init = numpy_helper.from_array(arr, node.output[0])
                model.graph.initializer.append(init)
                continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def io_shapes(g: str) -> dict:
    if g in ("seg", "decoder"):
        return {"mask_logits": ["P", 56, 56], "presence_logits": ["P"]}
    if g == "embed":
        return {"tokens": [1, 196, WIDTH], "skip": [1, SKIP_C, 56, 56]}
    return {"tokens_out": [1, "T", WIDTH], "attn_received": [1, "T"]}


def fix_io(mp: onnx.ModelProto, g: str):
    """Exact output shapes (torch names fixed dims like 'Gathermask_logits_dim_1'); drop intermediate
    value_info (shape facts for tract come from the inputs)."""
    shapes = io_shapes(g)
    for o in mp.graph.output:
        dims = o.type.tensor_type.shape.dim
        want = shapes[o.name]
        assert len(dims) == len(want), (g, o.name)
        for d, w in zip(dims, want):
            d.Clear()
            if isinstance(w, str):
                d.dim_param = w
            else:
                d.dim_value = w
    del mp.graph.value_info[:]


def pack_shared(tmp: str, out_dir: str):
    """Rewrite all graphs so that initialisers >= EXTERNAL_MIN_BYTES live in one weights.bin (deduplicated)."""
    os.makedirs(out_dir, exist_ok=True)
    blob = bytearray()
    index: dict[str, tuple[int, int]] = {}
    stats = {"tensors": 0, "shared": 0}
    models = {}
    for g in GRAPHS:
        mp = onnx.load(os.path.join(tmp, f"{g}.onnx"))  # no external data from torch for this size
        constants_to_initializers(mp)
        fix_io(mp, g)
        for t in mp.graph.initializer:
            arr = numpy_helper.to_array(t)
            if arr.nbytes < EXTERNAL_MIN_BYTES:
                continue
            raw = np.ascontiguousarray(arr).tobytes()
            key = hashlib.sha256(str(arr.dtype).encode() + str(arr.shape).encode() + raw).hexdigest()
            stats["tensors"] += 1
            if key not in index:
                pad = (-len(blob)) % 64
                blob += b"\0" * pad
                index[key] = (len(blob), len(raw))
                blob += raw
            else:
                stats["shared"] += 1
            off, ln = index[key]
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.ClearField("int64_data")
            t.ClearField("int32_data")
            t.ClearField("double_data")
            del t.external_data[:]
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", "weights.bin"), ("offset", str(off)), ("length", str(ln))):
                e = t.external_data.add()
                e.key, e.value = k, v
        mp.producer_name = "maskd training/export.py"
        models[g] = mp
    for f in os.listdir(out_dir):
        if f.endswith(".onnx") or f == "weights.bin":
            os.remove(os.path.join(out_dir, f))
    with open(os.path.join(out_dir, "weights.bin"), "wb") as f:
        f.write(blob)
    for g, mp in models.items():
        with open(os.path.join(out_dir, f"{g}.onnx"), "wb") as f:
            f.write(mp.SerializeToString())
    print(f"weights.bin: {len(blob) / 1e6:.2f} MB, {len(index)} unique tensors, "
          f"{stats['shared']} of {stats['tensors']} references shared", flush=True)


def sess(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def verify(m: ViTSeg, out_dir: str):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for g in GRAPHS:
        onnx.checker.check_model(os.path.join(out_dir, f"{g}.onnx"))
        mp = onnx.load(os.path.join(out_dir, f"{g}.onnx"), load_external_data=False)
        ops = sorted({n.op_type for n in mp.graph.node})
        if g in ("seg", "block0", "decoder", "embed"):
            print(f"{g}.onnx ops: {' '.join(ops)}")
    rng = np.random.default_rng(0)
    # real-ish inputs: a val image if present, else noise
    vimg = os.path.join(ROOT, "training", "work", "data", "val", "images.npy")
    if os.path.exists(vimg):
        imgs = np.load(vimg, mmap_mode="r")[:3].astype(np.float32)
    else:
        imgs = rng.uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    imgs = ((imgs / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(0, 3, 1, 2)
    try:
        import textenc

        text = textenc.encode(["red circle", "blue square", "yellow star", "a crimson disc", "purple hexagon"])
    except Exception:
        text = rng.normal(0, 1, (5, 384)).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
    S = {g: sess(os.path.join(out_dir, f"{g}.onnx")) for g in GRAPHS}
    d_pt, d_chain, d_pres_pt, d_pres_chain = 0.0, 0.0, 0.0, 0.0
    for i in range(imgs.shape[0]):
        x = imgs[i:i + 1]
        for P in (1, 5):
            t = text[:P]
            mo, po = S["seg"].run(None, {"image": x, "text": t})
            with torch.no_grad():
                mt, pt = SegFull(m)(torch.from_numpy(x), torch.from_numpy(t))
            d_pt = max(d_pt, float(np.abs(mo - mt.numpy()).max()))
            d_pres_pt = max(d_pres_pt, float(np.abs(po - pt.numpy()).max()))
            tok, skip = S["embed"].run(None, {"image": x})
            for k in range(DEPTH):
                tok, att = S[f"block{k}"].run(None, {"tokens": tok})
                assert att.shape == (1, 196) and abs(att.sum() - 1) < 1e-3, (att.shape, att.sum())
            mc, pc = S["decoder"].run(None, {"tokens": tok, "skip": skip, "text": t})
            d_chain = max(d_chain, float(np.abs(mc - mo).max()))
            d_pres_chain = max(d_pres_chain, float(np.abs(pc - po).max()))
            assert mo.shape == (P, 56, 56) and po.shape == (P,)
    print(f"ORT seg.onnx vs PyTorch: max|d mask_logits| {d_pt:.3g}, max|d presence_logits| {d_pres_pt:.3g}")
    print(f"stage chain (embed->block0..7->decoder) vs seg.onnx: max|d mask| {d_chain:.3g}, "
          f"max|d presence| {d_pres_chain:.3g}")
    # blocks at other T (token pruning)
    dT = 0.0
    for T in (1, 49, 98, 150):
        tok = rng.normal(0, 1, (1, T, WIDTH)).astype(np.float32)
        for k in (0, DEPTH - 1):
            o, a = S[f"block{k}"].run(None, {"tokens": tok})
            with torch.no_grad():
                ot, at = SegBlock(m.blocks[k])(torch.from_numpy(tok))
            dT = max(dT, float(np.abs(o - ot.numpy()).max()), float(np.abs(a - at.numpy()).max()))
            assert o.shape == (1, T, WIDTH) and a.shape == (1, T)
    print(f"blocks at T in (1,49,98,150): ORT vs PyTorch max|d| {dT:.3g}")
    assert d_chain < 1e-4, d_chain
    return d_pt, d_pres_pt, d_chain, d_pres_chain, dT


MANIFEST = """\
# maskd model manifest (read by the daemon). Paths are relative to this file.
# Made by training/export.py from {ckpt_desc}.
name = "maskd-vitseg-t8"

[text]
model = "text/minilm-l6-v2-int8.onnx"
vocab = "text/vocab.txt"
lowercase = true            # BERT uncased: lowercase + strip accents (NFD, drop Mn), WordPiece
max_tokens = 128
input_ids = "input_ids"
attention_mask = "attention_mask"
token_type_ids = "token_type_ids"
output = "last_hidden_state"
dim = 384                   # mean pooling over attention mask, then L2 normalise

[image]
width = 224
height = 224
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[segmenter]
model = "{seg}/seg.onnx"
image_input = "image"
text_input = "text"
mask_output = "mask_logits"
score_output = "presence_logits"
mask_size = [56, 56]
mask_threshold = 0.5        # on sigmoid(mask logit)
score_threshold = {score_threshold}      # on sigmoid(presence logit); see docs/MODEL.md for the trade-off

[stages]
embed = "{seg}/embed.onnx"
blocks = [{blocks}]
decoder = "{seg}/decoder.onnx"
tokens = 196
width = 192
"""


def write_manifest(desc: str, out: str, manifest: str, score_threshold: float):
    seg = os.path.relpath(out, MODELS)
    blocks = ", ".join(f'"{seg}/block{i}.onnx"' for i in range(DEPTH))
    with open(os.path.join(MODELS, manifest), "w") as f:
        f.write(MANIFEST.format(blocks=blocks, ckpt_desc=desc, seg=seg, score_threshold=score_threshold))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "training", "work", "ckpt", "last.pt"))
    ap.add_argument("--weights", default="ema", choices=["ema", "model"])
    ap.add_argument("--out", default=SEG)
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--score-threshold", type=float, default=None,
                    help="presence threshold written to the manifest [default: sigmoid(presence shift), i.e. the "
                         "raw presence logit > 0: the calibration's >= 95%% absent-ok target costs most true "
                         "detections with this presence head, see docs/MODEL.md]")
    ap.add_argument("--manifest", default="default.toml", help="manifest file name in models/ (written when --out is under models/)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    m, step, elapsed = load_model(a.ckpt, a.weights)
    desc = f"{os.path.basename(a.ckpt)} ({a.weights} weights, step {step}, {elapsed / 60:.1f} min of training)"
    shift = 0.0
    if not a.no_calibrate:
        c = calibrate(m)
        shift = c["presence_shift"] if c else 0.0
        if c:
            desc += f"; calibrated mask {c['mask_shift']:+.2f} presence {c['presence_shift']:+.2f}"
    print("exporting", desc, flush=True)
    tmp = tempfile.mkdtemp(prefix="maskd-export-")
    try:
        export_graphs(m, tmp)
        stage = tempfile.mkdtemp(prefix="maskd-seg-")
        pack_shared(tmp, stage)
        verify(m, stage)
        os.makedirs(a.out, exist_ok=True)
        for f in os.listdir(a.out):
            if f.endswith(".onnx") or f == "weights.bin":
                os.remove(os.path.join(a.out, f))
        for f in os.listdir(stage):
            shutil.move(os.path.join(stage, f), os.path.join(a.out, f))
        shutil.rmtree(stage, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if os.path.abspath(a.out).startswith(os.path.abspath(MODELS) + os.sep):
        thr = a.score_threshold if a.score_threshold is not None else round(1 / (1 + math.exp(-shift)), 3)
        write_manifest(desc, a.out, a.manifest, thr)
    tot = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"models/seg total {tot / 1e6:.2f} MB; export source: {desc}")


if __name__ == "__main__":
    main()
