#!/usr/bin/env python3
"""Exports a CLIP text tower (`CLIPTextModelWithProjection`) for maskd's `[text]`, and
writes PyTorch's reference token ids and embeddings beside it.

    python export/clip_text.py --fixture tests/data/clip_text      # the test fixture
    python export/clip_text.py --checkpoint DIR --out models/clip  # a local checkpoint

`--fixture` builds a tiny random-weight tower (hidden 32, 2 layers, 2 heads, projection
16 so that it fits the segmenter of tests/data/fixture) and a tiny byte-level BPE
tokenizer in CLIP's layout (NFC + lowercase, CLIP's split regex, byte-level, `</w>`
word ends, `<|startoftext|> ... <|endoftext|>`, padded and truncated to 77), trained on a
few hundred words here, because the real CLIP merges cannot be downloaded. Nothing is
downloaded: a `--checkpoint` directory must hold `config.json`, the weights and
`tokenizer.json` already.

The graph has both outputs: `last_hidden_state` [1, L, hidden] (for `pooling = "eos"`)
and `text_embeds` [1, projection] (for `pooling = "none"`, the projected EOS token, what
CLIPSeg's FiLM takes, unnormalised). `L` is a dynamic axis.

Needs torch, transformers, tokenizers, onnx (CPU wheels are fine). Not run by CI.
"""

import argparse
import json
import os

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

# Prompts the reference covers: plain, punctuation, case, digits, an unknown word, a
# non-ASCII word, an apostrophe contraction, a literal special token, and a long one
# that the 77-token limit truncates in PyTorch (maskd refuses it; the test checks both).
PROMPTS = [
    "red circle",
    "a photo of a cat",
    "Blue Square!",
    "the 3 green triangles",
    "zebra-striped ellipse",
    "café au lait",
    "it's a yellow star",
    "dog <|endoftext|> cat",
    "a",
    "",
    " ".join(["small purple hexagon"] * 20),
]

# CLIP's split pattern (from its tokenizer.json): contractions, letter runs, single
# digits, other runs.
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

CORPUS_WORDS = """
a an the of on in at with and or photo picture image of red green blue yellow purple
orange black white grey gray pink brown cyan magenta circle square triangle star
hexagon ellipse rectangle pentagon heart cross ring small large big tiny huge striped
dotted dark light bright cat dog bird car person tree house road sky cup chair table
bottle phone window door shape shapes circles squares triangles stars one two three
""".split()


def build_tokenizer(max_len):
    """CLIP's tokenizer layout with a vocabulary trained here: CLIP's own order (the 256
    byte symbols, the same with `</w>`, the merges' results, then `<|startoftext|>` and
    `<|endoftext|>` last, so that argmax-of-ids finds the end token as CLIP's legacy
    pooling does), and every byte with and without `</w>`, so no text maps to unknown."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    trainer_tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    corpus = [" ".join(CORPUS_WORDS[i:] + CORPUS_WORDS[:i]) for i in range(len(CORPUS_WORDS))]
    trainer_tok.train_from_iterator(corpus, trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in trained["merges"]]

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {}
    for t in alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]:
        vocab.setdefault(t, len(vocab))
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], unk_token="<|endoftext|>", end_of_word_suffix="</w>")
    )
    tok.normalizer = trainer_tok.normalizer
    tok.pre_tokenizer = trainer_tok.pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", eos), ("<|startoftext|>", bos), trim_offsets=False, add_prefix_space=False
    )
    tok.enable_truncation(max_len)
    tok.enable_padding(length=max_len, pad_id=eos, pad_token="<|endoftext|>")
    return tok


class Tower(torch.nn.Module):
    """Both outputs, positionally, so the ONNX graph names them as the manifest does."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.text_embeds


def export(model, path):
    ids = torch.tensor([[5, 6, 7, 8]], dtype=torch.int64)
    torch.onnx.export(
        Tower(model).eval(),
        (ids, torch.ones_like(ids)),
        path,
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state", "text_embeds"],
        dynamic_axes={"input_ids": {1: "L"}, "attention_mask": {1: "L"}, "last_hidden_state": {1: "L"}},
        opset_version=17,
        dynamo=False,
    )


def reference(model, tok):
    eos = tok.token_to_id("<|endoftext|>")
    rows = []
    for text in PROMPTS:
        enc = tok.encode(text)
        ids = torch.tensor([enc.ids], dtype=torch.int64)
        mask = torch.tensor([enc.attention_mask], dtype=torch.int64)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)
        # transformers pools at the first end-of-text token; record where, to check maskd's.
        eos_at = int((ids[0] == eos).int().argmax())
        rows.append(
            {
                "text": text,
                "ids": enc.ids,
                "attention_mask": enc.attention_mask,
                "truncated": len(enc.overflowing) > 0,
                "eos_position": eos_at,
                "pooled": out.last_hidden_state[0, eos_at].tolist(),
                "text_embeds": out.text_embeds[0].tolist(),
            }
        )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", help="write the tiny random-weight fixture into this directory")
    ap.add_argument("--checkpoint", help="a local transformers CLIP (or CLIPSeg) checkpoint directory")
    ap.add_argument("--out", help="output directory for --checkpoint")
    args = ap.parse_args()
    if bool(args.fixture) == bool(args.checkpoint):
        ap.error("give exactly one of --fixture and --checkpoint")
    if args.fixture:
        out = args.fixture
        torch.manual_seed(17)
        tok = build_tokenizer(77)
        config = CLIPTextConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=32,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tok.token_to_id("<|startoftext|>"),
            eos_token_id=tok.token_to_id("<|endoftext|>"),
            pad_token_id=tok.token_to_id("<|endoftext|>"),
        )
        model = CLIPTextModelWithProjection(config).eval()
    else:
        if not args.out:
            ap.error("--checkpoint needs --out")
        out = args.out
        tok = Tokenizer.from_file(os.path.join(args.checkpoint, "tokenizer.json"))
        model = CLIPTextModelWithProjection.from_pretrained(args.checkpoint, local_files_only=True).eval()
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    export(model, os.path.join(out, "text.onnx"))
    rows = reference(model, tok)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"torch": torch.__version__, "prompts": rows}, f, indent=None)
        f.write("\n")
    norms = [float(np.linalg.norm(r["text_embeds"])) for r in rows]
    print(f"{out}: {len(rows)} prompts, vocab {tok.get_vocab_size()}, |text_embeds| {min(norms):.3f}..{max(norms):.3f}")


if __name__ == "__main__":
    main()
